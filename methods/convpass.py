"""Convpass (Jie & Deng, 2022, "Convolutional Bypasses Are Better Vision Transformer Adapters"): a small
convolutional bypass beside each block's attention and beside its MLP.

    bypass(h) = up(dropout(qgelu(conv3x3(qgelu(down(h))))))
    block: x1 = x + drop_path(attn(h1)) + drop_path(s * bypass_attn(h1)), out = x1 + drop_path(mlp(h2)) + ...

As JieShibo/PETL-ViT convpass/vtab/convpass.py: the bypass reads the sub-layer's normalised input (h1 =
norm1(x), h2 = norm2(x)); down and up are 1x1 convs (Linears) to and from 8 channels; the 3x3 conv runs on
the patch tokens laid out on their grid, and on each prefix (class) token as its own 1x1 map (so only its
centre tap and bias act); QuickGELU before and after the conv, dropout 0.1, down Xavier-uniform, up zero (the
model starts unchanged), conv "identity" (zero but the centre tap, an identity) or "xavier". Wrapping
`attn` and `mlp` makes it exactly parallel; the branch's drop-path (and LayerScale) move into the wrapper, and
the bypass gets its own drop-path draw at the branch's rate, as the released forward_block calls drop_path
once on the sub-layer and once on the bypass, in that order (so one seed gives the same training-mode draws).
A LayerScale, which the released ViT lacks, scales the frozen sub-layer only. Checked against the released
forward_block and Convpass on a random ViT-B/16 with drop-path 0.1: max abs logit diff 5.4e-7 in eval, 6.0e-7
in training under one seed.
12 x 2 x (768*8+8 + 8*8*9+8 + 8*768+768) = 327,552 parameters on ViT-B/16 (0.33M).

ViT only: in timm's Swin the attention module sees windows, not the map the paper's bypass convolves.

Weight decay: every trained tensor decayed, biases included: Convpass's code passes all of them to one
AdamW (JieShibo/PETL-ViT convpass/vtab/train.py: AdamW(trainable, weight_decay=wd)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SCALES = [0.01, 0.1, 1.0, 10.0, 100.0]
SOURCE = ("dim 8, QuickGELU, dropout 0.1, Xavier down, zero up: JieShibo/PETL-ViT convpass/vtab/convpass.py, train.py "
          "(also AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, drop-path 0.1); scale and conv init are "
          "per task in convpass/vtab/configs/convpass/*.yaml, from {0.01, 0.1, 1, 10, 100} x {identity, xavier}: "
          "of the 19 configs (one per VTAB-1k task), s 0.1, 1 and 10 tie (5 each; 100: 3, 0.01: 1) and 1 is the "
          "median; xavier on 10 of 19")


@dataclass
class ConvpassConfig:
    dim: Annotated[int, Range(min=1)] = 8  # channels of the bypass
    scale: Annotated[float, Range(gt=0)] = 1.0  # s
    conv_init: Literal["xavier", "identity"] = "xavier"  # the configs' xavier_init: true / false
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ConvBypass(nn.Module):
    """Tokens (B, prefix + H*W, C) -> (B, prefix + H*W, C) through 1x1 down, 3x3 on the grid, 1x1 up."""

    def __init__(self, width: int, dim: int, grid: tuple[int, int], prefix: int, conv_init: str, dropout: float):
        super().__init__()
        self.grid, self.prefix = grid, prefix
        self.down = nn.Linear(width, dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.up = nn.Linear(dim, width)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.down.weight)
        if conv_init == "xavier":
            nn.init.xavier_uniform_(self.conv.weight)
        else:
            nn.init.zeros_(self.conv.weight)
            with torch.no_grad():
                self.conv.weight[:, :, 1, 1] = torch.eye(dim)
        for tensor in (self.down.bias, self.conv.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(tensor)

    def forward(self, x):
        b, n, _ = x.shape
        (h, w), p = self.grid, self.prefix
        if n != p + h * w:
            raise UserError(f"convpass: expected {p} prefix + {h}x{w} patch tokens, got {n} tokens "
                            "(the token grid is fixed when the method is applied)")
        z = self.act(self.down(x))
        c = z.shape[-1]
        patches = self.conv(z[:, p:].reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        prefix = self.conv(z[:, :p].reshape(b * p, c, 1, 1)).reshape(b, p, c)  # each a 1x1 map
        z = torch.cat([prefix, patches], dim=1)
        return self.up(self.dropout(self.act(z)))


class Bypassed(nn.Module):
    """drop_path(layer_scale(frozen(h))) + drop_path(scale * bypass(h)): the sub-layer's branch as it was and
    its bypass on the same (normalised) input, each with its own drop-path draw."""

    def __init__(self, frozen: nn.Module, bypass: ConvBypass, scale: float, layer_scale: nn.Module | None = None,
                 drop_path: nn.Module | None = None):
        super().__init__()
        self.frozen = frozen
        self.layer_scale = layer_scale if layer_scale is not None else nn.Identity()
        self.drop_path = drop_path if drop_path is not None else nn.Identity()
        self.bypass = bypass
        self.scale = scale

    def forward(self, h, **kwargs):  # kwargs: what the block passes its attention (attn_mask, is_causal)
        branch = self.drop_path(self.layer_scale(self.frozen(h, **kwargs)))
        return branch + self.drop_path(self.scale * self.bypass(h))  # a second call: a draw of its own


class Convpass(Method):
    name = "convpass"
    description = "convolutional bypasses (1x1 down, 3x3 on the token grid, 1x1 up) beside each attention and MLP"
    paper = "Convpass (Jie & Deng, 2022, arXiv 2207.07039), JieShibo/PETL-ViT convpass"
    Config = ConvpassConfig
    families = ("vit",)  # needs the patch-token grid at the attention's input
    recipe = "noah"
    decay_rule = "all"  # see the module docstring
    tune_grid = {"scale": SCALES, "conv_init": ["identity", "xavier"]}  # what the per-task configs choose from
    defaults_source = SOURCE

    def check_fit(self, model):
        refuse_above(self, "option 'dim'", self.config.dim, min(b.dim for b in anatomy(model, self.name).blocks),
                     "the width of the blocks it adapts")

    def apply(self, model):
        cfg = self.config
        vit = anatomy(model, self.name)
        grid = tuple(s // p for s, p in zip(vit.input_size, vit.patch_size))
        for i, block in enumerate(vit.blocks):
            if block.attn is None or block.mlp is None or len(block.drop_paths) != 2:
                raise UserError(f"{self.name}: block {i} lacks the attention, the MLP or their drop-paths, "
                                "which the bypasses sit beside")
            scales = block.branch_scales or (None, None)
            for part, layer_scale, drop_path in zip(("attn", "mlp"), scales, block.drop_paths):
                for moved in (layer_scale, drop_path):  # into the wrapper: they act on the sub-layer's branch
                    if moved is not None:
                        replace_module(block.module, moved, nn.Identity())
                bypass = ConvBypass(block.dim, cfg.dim, grid, vit.num_prefix_tokens, cfg.conv_init, cfg.dropout)
                block.set_part(part, Bypassed(getattr(block, part), bypass, cfg.scale, layer_scale, drop_path))
        return model
