"""The demo's pre-trained backbone: a tiny ViT fully trained on an upstream synthetic task (data.demo draws it),
so that transfer from its frozen features means something; `prepare` writes the demo's tasks and this
backbone once."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from petlbench.backbone import BackboneSpec, preprocessing
from petlbench.data.decode import TensorData
from petlbench.data.demo import COLOURS, SHAPES, TASKS, UPSTREAM_IMAGES, VERSION, upstream_sample, write_task
from petlbench.engine.train import fit
from petlbench.engine.demo_once import prepare_once
from petlbench.params import build_model
from petlbench.registry import get_method
from petlbench.specs import TrainConfig
from petlbench.weights import write_safetensors


def pretrain_upstream(path: Path, backbone: dict, seconds_log: Callable[[str], None]) -> dict:
    """Full training of the demo ViT on the upstream task, saved as safetensors (head dropped on load)."""
    rng = np.random.default_rng(1234)
    samples = [upstream_sample(rng) for _ in range(UPSTREAM_IMAGES)]
    images = torch.from_numpy(np.stack([np.asarray(im).transpose(2, 0, 1) for im, _ in samples]))
    labels = torch.tensor([label for _, label in samples])
    spec = BackboneSpec(backbone["name"], backbone.get("args", {}), pretrained=False,
                        mean=backbone.get("mean"), std=backbone.get("std"))
    model, _, _ = build_model(spec, get_method("full")(), len(SHAPES) * len(COLOURS), seed=0)
    prep = preprocessing(model, spec)
    mean, std = (torch.tensor(prep[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    n_val = 1000
    train = TensorData(images[n_val:], labels[n_val:], mean, std)
    val = TensorData(images[:n_val], labels[:n_val], mean, std)
    cfg = TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, epochs=8, warmup_epochs=1, batch_size=128)
    metrics = fit(model, train, val, cfg, torch.device("cpu"), seed=0)
    write_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, path)  # the umask's mode
    seconds_log(f"demo: upstream pre-training reached {metrics['top1']:.1%} on held-out upstream images")
    return {"upstream_val_top1": metrics["top1"], "upstream_images": UPSTREAM_IMAGES, "train": cfg.__dict__}


def prepare(root: Path, suite, log: Callable[[str], None] = print) -> None:
    """Make the demo data and the pre-trained demo backbone under `root`, once (idempotent)."""
    prepare_once(root, suite, "demo", VERSION, TASKS, write_task, 100,
                 lambda ckpt: {"upstream": pretrain_upstream(ckpt, suite.backbone, log)}, "the demo backbone", log)
