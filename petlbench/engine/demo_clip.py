"""The CLIP demo's pre-trained backbone: a tiny open_clip CLIP (petlbench/clip_configs/demo-tiny.json) trained
contrastively on synthetic captioned images (data.demo_clip draws them), so that zero-shot classification, prompt
learning and caches have a real image-text space to work in; `prepare` writes the suite's tasks and this
checkpoint once. Zero-shot accuracy on colour x shape combinations the pre-training never showed is what the
demo is for: `zero_shot` measures it with open_clip's own classifier.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from petlbench.clip import CONFIG_DIR
from petlbench.data.demo_clip import TASKS, VERSION, caption_sample, write_task
from petlbench.engine.threads import rebalance, register, unregister
from petlbench.engine.demo_once import prepare_once
from petlbench.weights import write_safetensors

MODEL = "demo-tiny"
PAIRS, EPOCHS, BATCH, LR, WEIGHT_DECAY = 6144, 8, 128, 2e-3, 0.1


def create_clip(name: str = MODEL) -> nn.Module:
    """The open_clip model of a shipped config, random weights (nothing fetched)."""
    import open_clip
    if name not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip.create_model(name, pretrained=None)


def tokenizer(name: str = MODEL):
    import open_clip
    if name not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip.get_tokenizer(name)


def to_input(images: list, model: nn.Module) -> torch.Tensor:
    """PIL images at the model's size, normalised as its preprocessing says (open_clip's defaults: OpenAI's)."""
    cfg = model.visual.preprocess_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    pixels = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")).transpose(2, 0, 1) for im in images]))
    return (pixels.float() / 255 - mean) / std


def pretrain(path: Path, log: Callable[[str], None] = print, pairs: int = PAIRS, epochs: int = EPOCHS) -> dict:
    """Contrastive pre-training (open_clip's ClipLoss: symmetric InfoNCE, learnable temperature) with AdamW and a
    cosine schedule; the state dict saved as safetensors. What it did, for the marker file."""
    from open_clip.loss import ClipLoss
    rng = np.random.default_rng(1234)
    samples = [caption_sample(rng) for _ in range(pairs)]
    torch.manual_seed(0)
    model = create_clip()
    images = to_input([im for im, _ in samples], model)
    texts = tokenizer()([caption for _, caption in samples])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": other, "weight_decay": 0}],
                                  lr=LR, betas=(0.9, 0.98), eps=1e-6)
    steps = epochs * (pairs // BATCH)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    loss_fn, order, losses = ClipLoss(), torch.Generator().manual_seed(0), []
    model.train()
    register()  # take this process's share of the cores, as a run does
    try:
        for epoch in range(epochs):
            rebalance()  # another run started or ended on this machine: take the new share, as fit does
            perm, total = torch.randperm(pairs, generator=order), 0.0
            for b in range(pairs // BATCH):
                idx = perm[b * BATCH:(b + 1) * BATCH]
                loss = loss_fn(*model(images[idx], texts[idx]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))  # as open_clip's training does
                total += loss.item()
            losses.append(total / (pairs // BATCH))
    finally:
        unregister()
    sha256 = write_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
    log(f"demo-clip: pre-trained on {pairs} captioned images, {epochs} epochs, final loss {losses[-1]:.3f}")
    return {"pairs": pairs, "epochs": epochs, "batch_size": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY,
            "steps": steps, "loss_per_epoch": [round(x, 4) for x in losses], "sha256": sha256,
            "logit_scale": round(float(model.logit_scale.detach().exp()), 3)}


@torch.no_grad()
def zero_shot(model: nn.Module, images: torch.Tensor, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Predicted classes from open_clip's zero-shot classifier (prompt ensemble of the templates)."""
    from open_clip import build_zero_shot_classifier
    model.eval()
    weights = build_zero_shot_classifier(model, tokenizer(), classnames, templates, num_classes_per_batch=None,
                                         device="cpu", use_tqdm=False)
    return (F.normalize(model.encode_image(images), dim=-1) @ weights).argmax(dim=1)


def prepare(root: Path, suite, log: Callable[[str], None] = print) -> None:
    """Make the CLIP demo's tasks and its pre-trained tiny CLIP under `root`, once (idempotent)."""
    prepare_once(root, suite, "demo-clip", VERSION, TASKS, write_task, 200,
                 lambda ckpt: {"model": MODEL, "checkpoint": ckpt.name, "pretrain": pretrain(ckpt, log)},
                 "the tiny CLIP", log)
