"""CLIP-Adapter: a residual bottleneck MLP on CLIP's image feature, beside the fixed text classifier.

Gao et al., 2021 ("CLIP-Adapter: Better Vision-Language Models with Feature Adapters"); gaopengcuhk/CLIP-Adapter
clip_adapter.py: `Adapter(c_in, reduction=4)` = Linear(E, E/4, no bias), ReLU, Linear(E/4, E, no bias), ReLU on the
image feature after CLIP's projection (before normalisation), mixed as 0.2 * adapter(f) + 0.8 * f, normalised,
then CLIP's logit scale x the text features of the class names. Only the adapter trains (2 x E x E/4 parameters).

The text classifier is the task's names through its templates (`ClipText.class_embeddings`, CLIP's prompt ensemble;
one template gives the official single-prompt features). Training: the released code trains through CoOp's Dassl
trainer with a config it does not ship, so the runner's default recipe (NOAH's AdamW lr 1e-3, 100 epochs) is used,
without drop-path and with CLIP's own normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.method import Method, refuse_above
from petlbench.options import Range
from petlbench.textheads import ZeroShotHead


class Bottleneck(nn.Sequential):
    def __init__(self, dim: int, reduction: int):
        super().__init__(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                         nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())


class ClipAdapterHead(ZeroShotHead):
    """CLIP's projection and the text classifier (frozen), the adapter between them (trains)."""

    def __init__(self, projection, class_embeddings, logit_scale, reduction: int, ratio: float):
        super().__init__(projection, class_embeddings, logit_scale)
        self.adapter = Bottleneck(class_embeddings.shape[1], reduction)
        self.ratio = ratio

    def frozen_parts(self) -> tuple[nn.Module, ...]:
        return (self.proj, self.classes)

    def method_parts(self) -> tuple[nn.Module, ...]:
        return (self.adapter,)

    def renamed(self, rows: torch.Tensor) -> nn.Module:
        """Other classes (base-to-new's new ones) behind the same trained adapter."""
        weight, first = self.proj.weight.detach(), self.adapter[0]
        head = ClipAdapterHead(weight.T.to(rows.device), rows, float(self.logit_scale),
                               first.in_features // first.out_features, self.ratio)
        head.adapter, head.text = self.adapter, self.text
        return head.to(weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj(x)
        f = self.ratio * self.adapter(f) + (1 - self.ratio) * f
        return self.logit_scale * self.classes(F.normalize(f, dim=-1))


@dataclass
class ClipAdapterConfig:
    reduction: Annotated[int, Range(min=1)] = 4  # bottleneck E / reduction (the released Adapter(1024, 4))
    ratio: Annotated[float, Range(min=0, max=1)] = 0.2  # the adapted feature's share (the released `ratio = 0.2`)


class ClipAdapter(Method):
    name = "clip_adapter"
    description = "residual bottleneck MLP on CLIP's image feature (ratio 0.2), fixed text classifier"
    paper = "Gao et al., 2021 (CLIP-Adapter, arXiv 2110.04544)"
    Config = ClipAdapterConfig
    families = ("vit", "resnet")  # CLIP's ViT or ResNet image tower (petlbench.clip, petlbench.clip_resnet)
    needs_text = True
    backbone_defaults = {"drop_path_rate": 0.0, "mean": "backbone", "std": "backbone"}  # CLIP's own preprocessing
    decay_rule = "all"  # Dassl's build_optimizer over the adapter's parameters (weights only, no biases)
    defaults_source = "gaopengcuhk/CLIP-Adapter clip_adapter.py (Adapter(c_in, reduction=4), ratio = 0.2)"

    def check_fit(self, model):
        refuse_above(self, "option 'reduction'", self.config.reduction, model.clip.projection.shape[1],
                     "the width of CLIP's image feature")

    def apply(self, model):
        text = model.clip
        model.head = ClipAdapterHead(text.projection, text.class_embeddings(text.classnames, text.templates),
                                     text.logit_scale, self.config.reduction, self.config.ratio)
        model.head.text = text  # what its for_classnames embeds new names with (base-to-new)
        return model
