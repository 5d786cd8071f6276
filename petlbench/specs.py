"""Plain specs on the ground floor: what a run trains with, a task, its preprocessing, the protocols.

Every other module reads these; this one imports nothing of petlbench, so no import cycle runs
through it (suite parsing, layouts, the training loop and the planner all share these types).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

# Which split files make up each role, per layout: `final` trains on trainval and tests on test;
# `tune` trains on train and selects on val. A suite may override any role under `splits:`.
LAYOUT_SPLITS = {
    "noah": {"train": ["train800"], "val": ["val200"], "trainval": ["train800val200"], "test": ["test"]},
    "fgvc": {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]},
}
PROTOCOLS = ("final", "tune")


@dataclass
class TrainConfig:
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4  # not applied to biases, norms, tokens (timm's filter_bias_and_bn)
    momentum: float = 0.9  # SGD only
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 512
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None
    lr_scale_batch: Optional[int] = None  # VPT's rule: the optimizer's lr = lr * batch_size / lr_scale_batch
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    eval_every: int = 0  # >0: also score the evaluation split every N epochs (a recorded curve, never a choice)


@dataclass
class Preprocessing:
    """How images become tensors: resize to input/crop_pct, then crop to the input size."""
    crop_pct: float = 1.0  # 1.0: resize straight to the input size (VTAB); 0.875: 256 -> 224 (FGVC)
    train: Literal["none", "random_crop_flip"] = "none"
    eval: Literal["none", "center_crop"] = "none"


@dataclass
class Task:
    name: str
    classes: int
    group: str = ""
    aliases: list[str] = field(default_factory=list)  # other folder names users have for it
    images: str = ""  # fgvc: image root inside the task folder (e.g. "images" for CUB)
