"""Tip-Adapter: a training-free cache of the few-shot images beside CLIP's zero-shot classifier.

Zhang et al., ECCV 2022 ("Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification"); formulation
from gaopengcuhk/Tip-Adapter (main.py `run_tip_adapter`, utils.py `build_cache_model`, `search_hp`):

    f      = unit-normalised CLIP image feature (after CLIP's projection)
    keys   = unit-normalised features of the training images (N, E); values = their one-hot labels (N, C)
    logits = s * f W_text^T + alpha * exp(-beta * (1 - f keys^T)) values

W_text is the zero-shot classifier of the task's class names and templates (`ClipText.class_embeddings`), s CLIP's
logit scale (the official code writes 100, which is OpenAI CLIP's scale; here the model's own, so alpha = 0 is
exactly `zeroshot`). alpha and beta are searched on the validation split over the official grid (beta from 0.1 in
`beta_steps` steps towards `beta_max`, alpha likewise; the first best in beta-major order, as `search_hp`), never on
test; the cache rows that are validation images (a `final` protocol's trainval holds val) are left out of the
search. The chosen alpha and beta, the cache size and the val accuracy go into the record's `closed_form`.

Departures: the official keys average 10 augmented passes (random resized crop 0.5-1, flip) of each training image;
here one pass of the un-augmented image (the suite's eval preprocessing), the cache's keys as the runner computes
every head input. Defaults: configs/imagenet.yaml (init alpha 1.17, beta 1, search_scale [7, 3], search_step
[200, 20]); the per-dataset values are in results/published and ../shared/reference/paper_settings/
tip_adapter_configs.csv.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.method import Method
from petlbench.options import Range
from petlbench.textheads import ZeroShotHead

CONFIGS = "gaopengcuhk/Tip-Adapter configs/imagenet.yaml (init_alpha 1.17, init_beta 1, search_scale [7, 3], " \
          "search_step [200, 20])"


class CacheKeys(nn.Module):
    """The cache's keys (N, E): a buffer when they stay as built, a parameter when they train (Tip-Adapter-F's
    `adapter` Linear, initialised from the cache). Sized by `fit_closed_form`; a saved task's keys resize it."""

    def __init__(self, dim: int, learn: bool):
        super().__init__()
        empty = torch.empty(0, dim)
        if learn:
            self.weight = nn.Parameter(empty)
        else:
            self.register_buffer("weight", empty)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.weight.T


class TipAdapterHead(ZeroShotHead):
    """The zero-shot head (CLIP's projection and the text classifier, both frozen) plus the cache."""

    def __init__(self, projection, class_embeddings, logit_scale, alpha: float, beta: float, learn_keys: bool):
        super().__init__(projection, class_embeddings, logit_scale)
        self.keys = CacheKeys(class_embeddings.shape[1], learn_keys)
        self.register_buffer("values", torch.empty(0, class_embeddings.shape[0]))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(beta)))

    for_classnames = None  # the cache's values are one-hot over the trained classes: no classifier of new names

    def frozen_parts(self) -> tuple[nn.Module, ...]:
        return (self.proj, self.classes)

    def method_parts(self) -> tuple[nn.Module, ...]:
        return (self.keys,)

    @torch.no_grad()
    def fill(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """The cache of pooled features (N, width) and labels: keys their normalised CLIP features, values one-hot."""
        keys = self.image_features(features.to(self.proj.weight))
        self.keys.weight.data = keys  # the same tensor object (a parameter stays the optimizer's and the task's)
        self.values.data = F.one_hot(labels.long(), self.num_classes).to(keys)

    def zero_shot(self, f: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.classes(f)

    def cache_logits(self, f: torch.Tensor, beta: torch.Tensor | float, rows: torch.Tensor | None = None):
        affinity = self.keys(f)
        values = self.values
        if rows is not None:
            affinity, values = affinity[:, rows], values[rows]
        return torch.exp(-beta * (1 - affinity)) @ values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.image_features(x)
        return self.zero_shot(f) + self.alpha * self.cache_logits(f, self.beta)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A saved task's cache has its own number of rows: take its size before loading (same tensor objects)."""
        for name, tensor in (("keys.weight", self.keys.weight), ("values", self.values)):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != tensor.shape:
                tensor.data = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def grid(top: float, steps: int) -> list[float]:
    """The official search values: 0.1 + i * (top - 0.1) / steps for i < steps."""
    return [i * (top - 0.1) / steps + 0.1 for i in range(steps)]


@torch.no_grad()
def search(head: TipAdapterHead, features: torch.Tensor, labels: torch.Tensor, betas: list[float],
           alphas: list[float], rows: torch.Tensor | None = None) -> tuple[float, float, float]:
    """(beta, alpha, accuracy): the first best on (features, labels) in beta-major order, as `search_hp`."""
    f = head.image_features(features.to(head.proj.weight))
    labels = labels.to(f.device)
    zero_shot = head.zero_shot(f)
    best = (betas[0], alphas[0], -1.0)
    for beta in betas:
        cache = head.cache_logits(f, beta, rows)
        for alpha in alphas:
            accuracy = ((zero_shot + alpha * cache).argmax(-1) == labels).float().mean().item()
            if accuracy > best[2]:  # strictly better: the first best stays, as in search_hp
                best = (beta, alpha, accuracy)
    return best


@dataclass
class TipConfig:
    init_alpha: Annotated[float, Range(min=0)] = 1.17  # the cache's weight before (or without) the search
    init_beta: Annotated[float, Range(gt=0)] = 1.0  # the affinity's sharpness before (or without) the search
    search: bool = True  # search alpha and beta on the validation split (search_hp); False: keep the init values
    beta_max: Annotated[float, Range(gt=0.1)] = 7.0  # search_scale[0]
    alpha_max: Annotated[float, Range(gt=0.1)] = 3.0  # search_scale[1]
    beta_steps: Annotated[int, Range(min=1)] = 200  # search_step[0]
    alpha_steps: Annotated[int, Range(min=1)] = 20  # search_step[1]


class TipAdapter(Method):
    name = "tip_adapter"
    description = "CLIP zero-shot plus a cache of the training images' features (alpha, beta chosen on val); no training"
    paper = "Zhang et al., ECCV 2022 (Tip-Adapter)"
    Config = TipConfig
    families = ("vit", "resnet")  # CLIP's ViT or ResNet image tower (petlbench.clip, petlbench.clip_resnet)
    needs_text = True
    trains = False
    closed_form = True
    defaults_source = CONFIGS
    backbone_defaults = {"drop_path_rate": 0.0, "mean": "backbone", "std": "backbone"}  # CLIP's own preprocessing
    decay_rule = "all"  # torch.optim.AdamW(adapter.parameters()) in main.py: every trained tensor decays
    learn_keys = False

    def apply(self, model):
        text = model.clip
        model.head = TipAdapterHead(text.projection, text.class_embeddings(text.classnames, text.templates),
                                    text.logit_scale, self.config.init_alpha, self.config.init_beta, self.learn_keys)
        return model

    def fit_closed_form(self, model, features, labels) -> dict[str, Any]:
        """The cache of the training images (shared with CoMo, whose head fills two caches)."""
        model.get_classifier().fill(features, labels)
        return {"cache_size": int(len(labels)), "init_alpha": self.config.init_alpha,
                "init_beta": self.config.init_beta}

    def search_val(self, head, features, labels, rows, betas, alphas) -> tuple[float, float, float]:
        """(beta, alpha, val accuracy) over the grid with the cache `rows` only; CoMo searches its blend instead."""
        return search(head, features, labels, betas, alphas, rows)

    def choose_on_val(self, model, features, labels, held_out) -> dict[str, Any]:
        head = model.get_classifier()
        rows = (~held_out).nonzero().flatten().to(head.values.device)
        chosen = {"val_images": int(len(labels)), "cache_rows_held_out": int(held_out.sum())}
        if not self.config.search:
            return {**chosen, "alpha": float(head.alpha), "beta": float(head.beta), "searched": False}
        c = self.config
        beta, alpha, acc = self.search_val(head, features, labels, rows, grid(c.beta_max, c.beta_steps),
                                           grid(c.alpha_max, c.alpha_steps))
        head.alpha.fill_(alpha)
        head.beta.fill_(beta)
        return {**chosen, "alpha": alpha, "beta": beta, "val_top1": acc, "searched": True,
                "grid": {"beta": [0.1, c.beta_max, c.beta_steps], "alpha": [0.1, c.alpha_max, c.alpha_steps]}}
