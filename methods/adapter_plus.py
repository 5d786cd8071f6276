"""Adapter+ (Steitz & Roth, CVPR 2024, "Adapters Strike Back"): a Post-Adapter after every block with a learned
per-channel scale.

    y = block(x);  out = y + drop_path(up(gelu(down(y)))) * scale

As visinf/adapter_plus (adapter_plus/vit_adapter.py `Adapter`, `AdapterBlock.forward_post`;
conf/adapter/base_adapter.yaml, adapter_plus.yaml): placement "post" (the adapter reads the block's output,
after the MLP's residual add, and adds to it), no norm inside the adapter, GELU, biases, Houlsby's init
(both projections truncated normal, std 0.01 within +-2 std, biases zero: near the identity, not exactly
it), the channel-wise scale starting at ones, and its own stochastic depth 0.1 on the adapter branch.
Bottleneck 8: 12 x (768*8+8 + 8*768+768 + 768) = 165,984 on ViT-B/16. The 77.6 VTAB-1k mean picks the
bottleneck per task from 1..32 on val (conf/experiment/vtab/adapter_plus_dim1-32.yaml): the tune grid.

Weight decay: timm's rule: Adapter+ groups its parameters as timm does (modeling/adaptermodel.py
add_weight_decay: no decay on 1-d tensors, biases, '.scaling' and the ViT's no_weight_decay()).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from timm.layers import DropPath
from torch import nn

from petlbench.backbones import anatomy
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SOURCE = ("bottleneck 8, drop-path 0.1 in the adapter, no adapter norm, Houlsby init (std 0.01), GELU, channel scale, "
          "post placement: visinf/adapter_plus conf/adapter/base_adapter.yaml, adapter_plus.yaml, adapter_plus/"
          "vit_adapter.py; AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, ViT drop-path 0.1: "
          "conf/train/default.yaml, conf/train/optimizer/adamw.yaml, conf/data/base_data.yaml, conf/config.yaml; "
          "bottleneck grid 1..32: conf/experiment/vtab/adapter_plus_dim1-32.yaml")


@dataclass
class AdapterPlusConfig:
    bottleneck: Annotated[int, Range(min=1)] = 8
    drop_path: Annotated[float, Range(min=0, lt=1)] = 0.1  # stochastic depth of the adapter branch itself


class PostAdapter(nn.Module):
    """y + drop_path(up(gelu(down(y)))) * scale, with a learned scale per channel."""

    def __init__(self, dim: int, bottleneck: int, drop_path: float):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.scale = nn.Parameter(torch.ones(dim))
        std = 0.01  # Houlsby et al.'s paper value, as Adapter+
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(layer.bias)

    def forward(self, y):
        return y + self.drop_path(self.up(self.act(self.down(y)))) * self.scale


class AdapterPlus(Method):
    name = "adapter_plus"
    description = "Adapter+: post-block bottleneck adapter with a learned per-channel scale and its own drop-path"
    paper = "Adapter+ (Steitz & Roth, CVPR 2024, 'Adapters Strike Back'), visinf/adapter_plus"
    Config = AdapterPlusConfig
    families = ("vit", "swin")  # reads each block's output with the width last (tokens, or Swin's B, H, W, C)
    recipe = "noah"  # Adapter+'s own recipe is the same: AdamW 1e-3, wd 1e-4, batch 64, 100 epochs, drop-path 0.1
    decay_rule = "timm"  # see the module docstring
    tune_grid = {"bottleneck": [1, 2, 4, 8, 16, 32]}  # the per-task dims of Adapter+ opt. (77.6), chosen on val
    # Adapter+ normalises with the backbone's own mean/std (0.5 for orig_in21k), not ImageNet's (paper, sec. 4)
    backbone_defaults = {"mean": "backbone", "std": "backbone"}
    defaults_source = SOURCE

    def check_fit(self, model):
        refuse_above(self, "option 'bottleneck'", self.config.bottleneck,
                     min(b.dim for b in anatomy(model, self.name).blocks), "the width of the blocks it adapts")

    def apply(self, model):
        cfg = self.config
        for block in anatomy(model, self.name).blocks:
            block.replace(nn.Sequential(block.module, PostAdapter(block.dim, cfg.bottleneck, cfg.drop_path)))
        return model
