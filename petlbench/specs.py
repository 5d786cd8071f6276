"""Plain specs on the ground floor: what a run trains with, a task, its preprocessing, the protocols.

Every other module reads these; this one imports only petlbench.options (for declared ranges, which
imports nothing else of petlbench), so no import cycle runs through it (suite parsing, layouts, the
training loop and the planner all share these types).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from petlbench.options import Range

# Which split files make up each role, per layout: `final` trains on trainval and tests on test;
# `tune` trains on train and selects on val. A suite may override any role under `splits:`.
LAYOUT_SPLITS = {
    "noah": {"train": ["train800"], "val": ["val200"], "trainval": ["train800val200"], "test": ["test"]},
    "fgvc": {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]},
    # DomainBed's folders (petlbench.data.domains): the training domains' 80 / 20 split, the held-out domain
    "domainbed": {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]},
    # CoOp trains on its train split only (val for choices): `final` trains on train here too
    "coop": {"train": ["train"], "val": ["val"], "trainval": ["train"], "test": ["test"]},
}
PROTOCOLS = ("final", "tune", "paper")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")  # PIL's resampling filters


@dataclass
class TrainConfig:
    optimizer: Literal["adamw", "sgd", "adam"] = "adamw"  # adam: L2 weight decay in the gradient (VQT's code)
    lr: Annotated[float, Range(gt=0)] = 1e-3
    weight_decay: Annotated[float, Range(min=0)] = 1e-4
    # which trained tensors weight decay reaches (petlbench.engine.decay): timm's filter (no decay on 1-d tensors,
    # biases, declared tokens), every one (PETL_Vision), or VPT's code's; a method's own is its `decay_rule`
    decay_rule: Literal["timm", "all", "vpt"] = "timm"
    momentum: Annotated[float, Range(min=0, lt=1)] = 0.9  # SGD only
    epochs: Annotated[int, Range(min=1)] = 100  # a method that does not train gets 0 (petlbench.plan.resolve_train)
    warmup_epochs: Annotated[int, Range(min=0)] = 10
    batch_size: Annotated[int, Range(min=1)] = 64
    eval_batch_size: Annotated[int, Range(min=1)] = 512
    label_smoothing: Annotated[float, Range(min=0, lt=1)] = 0.0
    grad_clip: Annotated[Optional[float], Range(gt=0)] = None  # max gradient norm; none: no clipping
    # VPT's rule: the optimizer's lr = lr * batch_size / lr_scale_batch
    lr_scale_batch: Annotated[Optional[int], Range(min=1)] = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # >0: also score the evaluation split every N epochs (a recorded curve, never a choice)
    eval_every: Annotated[int, Range(min=0)] = 0
    grad_checkpointing: bool = False  # recompute activations in backward: less memory for large backbones, same result


@dataclass
class Preprocessing:
    """How images become tensors: resize to input/crop_pct, then crop to the input size."""
    # 1.0: resize straight to the input size (VTAB); 0.875: 256 -> 224 (FGVC)
    crop_pct: Annotated[float, Range(gt=0, max=1)] = 1.0
    train: Literal["none", "random_crop_flip"] = "none"
    eval: Literal["none", "center_crop"] = "none"
    # the model's input side in pixels; default: the backbone's (a ViT's img_size, else its pretrained config's)
    input_size: Optional[Annotated[int, Range(min=1)]] = None


@dataclass
class Task:
    name: str
    classes: int
    group: str = ""
    aliases: list[str] = field(default_factory=list)  # other folder names users have for it
    images: str = ""  # fgvc: image root inside the task folder (e.g. "images" for CUB)
    # issue 16 (petlbench.classnames): class names in label order and prompt templates with {} for the name;
    # [] = unknown. A CLIP-style run needs one name per class (petlbench.suite.check_classnames)
    classnames: list[str] = field(default_factory=list, repr=False)
    templates: list[str] = field(default_factory=list, repr=False)
    classnames_source: str = ""  # where the names come from, in words + repo@commit/path (their file's `# source:`)
    # names read from the user's data once the data root is known (petlbench.data.datanames): "classes.txt" (an FGVC
    # dataset's own `<id> <name>` file) or "split_zhou" (CoOp's split file's [path, label, name] triples); "" = none
    classnames_from: str = ""
    # domainbed layout (petlbench.data.domains): the dataset folder under the data root, the held-out (test) domain
    # folder, the training domain folders, and every domain folder of the dataset the suite names (sorted)
    dataset: str = ""
    domain: str = ""
    train_domains: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    # domainbed: the label folders the held-out domain holds when it has only some of the training classes (ImageNet-A/-R:
    # 200 of ImageNet's 1000 wnids); its images are scored by the training classes' logits restricted to these
    class_subset: list[str] = field(default_factory=list, repr=False)
    class_subset_source: str = ""
    # domainbed: multi-hot labels from index files (petlbench.data.multilabel), scored by 11-point mAP (ELEVATER's VOC)
    multilabel: bool = False
