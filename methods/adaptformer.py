"""AdaptFormer (Chen et al., NeurIPS 2022): a scaled bottleneck beside each block's MLP ("AdaptMLP").

    x_out = x + drop_path(MLP(LN(x))) + s * up(dropout(relu(down(a))))

As ShoufaChen/AdaptFormer (models/adapter.py, models/custom_modules.py, main_image.py): ReLU, dropout 0.1 on
the bottleneck, s = 0.1, LoRA's init (down Kaiming-uniform, up and both biases zero: the model starts
unchanged), no norm inside the adapter. What the adapter reads, `a`:
- "stream" (the released code, ffn_adapter_layernorm_option "none"; also Adapter+'s and PETL_Vision's
  AdaptFormer): the block's residual stream before the MLP's norm. The block's pre-MLP norm moves into the
  wrapper, which computes drop_path(mlp(norm(x))) + s * adapter(x).
- "norm" (the paper's Eq. 3, LN(x')): the MLP's own normalised input.
Bottleneck 8 is the 0.16M AdaptFormer of the VTAB-1k tables: 12 x (768*8+8 + 8*768+768) = 156,768 on
ViT-B/16 (the paper's own default, 64, is 1.19M). Non-linear, so it does not merge.

The adapter is added after the MLP's drop-path, as the released block (models/custom_modules.py:
x + drop_path(mlp(norm2(x))) + adapt_x) and Adapter+'s reproduction: stochastic depth drops the frozen MLP,
never the adapter. The block's MLP drop-path moves into the wrapper, which draws the adapter's dropout before
it, in the released code's order (same logits and, with one seed, the same training-mode draws). A LayerScale,
which the released ViT lacks (timm's DINOv2, for one, has it), scales the frozen MLP only and moves in too.
Checked against the released Block on a random ViT-B/16 with drop-path 0.1: max abs logit diff 1.3e-6 in
eval, 1.6e-6 in training under one seed.

Weight decay: timm's rule, that of the NOAH recipe its lr and wd come from (AdaptFormer's own
main_image.py decays every trained tensor, but under SGD at its own lr, which petlbench does not use).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SOURCE = ("bottleneck 8: the 0.16M VTAB-1k AdaptFormer (SSF's VTAB-1k table; visinf/adapter_plus "
          "conf/experiment/ablations/other_configs/adaptformer.yaml dim 8); scale 0.1, LoRA init, no adapter norm: "
          "ShoufaChen/AdaptFormer main_image.py (ffn_adapter_scalar '0.1', ffn_adapter_init_option 'lora', "
          "ffn_adapter_layernorm_option 'none'); ReLU, dropout 0.1, reads the un-normalised stream: "
          "models/custom_modules.py, models/adapter.py")


@dataclass
class AdaptFormerConfig:
    bottleneck: Annotated[int, Range(min=1)] = 8
    scale: Annotated[float, Range(gt=0)] = 0.1  # s
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1  # on the bottleneck activations
    input: Literal["stream", "norm"] = "stream"  # the residual stream (released code) or LN of it (paper Eq. 3)


class Bottleneck(nn.Module):
    """up(dropout(relu(down(x)))), starting at exactly zero (LoRA's init)."""

    def __init__(self, dim: int, bottleneck: int, dropout: float):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for tensor in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(tensor)

    def forward(self, x):
        return self.up(self.dropout(self.act(self.down(x))))


class AdaptMLP(nn.Module):
    """drop_path(layer_scale(mlp(norm(x)))) + scale * adapter(x): the block's MLP branch as it was, with the
    adapter beside it, outside its drop-path. `norm` is the block's pre-MLP norm when the adapter reads the
    stream, an identity when the block still normalises x before calling this module."""

    def __init__(self, mlp: nn.Module, adapter: Bottleneck, scale: float, norm: nn.Module | None = None,
                 layer_scale: nn.Module | None = None, drop_path: nn.Module | None = None):
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.mlp = mlp
        self.layer_scale = layer_scale if layer_scale is not None else nn.Identity()
        self.drop_path = drop_path if drop_path is not None else nn.Identity()
        self.adapter = adapter
        self.scale = scale

    def forward(self, x):
        adapted = self.scale * self.adapter(x)  # first, as the released block: its dropout draws before drop-path
        return self.drop_path(self.layer_scale(self.mlp(self.norm(x)))) + adapted


class AdaptFormer(Method):
    name = "adaptformer"
    description = "scaled ReLU bottleneck (s=0.1) in parallel with each block's MLP, zero-initialised up-projection"
    paper = "AdaptFormer (Chen et al., NeurIPS 2022); VTAB-1k numbers (0.16M, bottleneck 8) from SSF's VTAB-1k table"
    Config = AdaptFormerConfig
    families = ("vit", "swin")  # pre-norm blocks: x + mlp(norm2(x)), tokens with the width last
    recipe = "noah"
    decay_rule = "timm"  # see the module docstring
    defaults_source = SOURCE

    def check_fit(self, model):
        refuse_above(self, "option 'bottleneck'", self.config.bottleneck,
                     min(b.dim for b in anatomy(model, self.name).blocks), "the width of the blocks it adapts")

    def apply(self, model):
        cfg = self.config
        for i, block in enumerate(anatomy(model, self.name).blocks):
            if block.mlp is None or len(block.norms) != 2 or len(block.drop_paths) != 2:
                raise UserError(f"{self.name}: block {i} lacks the pre-attention and pre-MLP norms, the MLP or "
                                "its drop-path, which AdaptFormer sits beside")
            adapter = Bottleneck(block.dim, cfg.bottleneck, cfg.dropout)
            # the MLP branch's LayerScale and drop-path move inside, so they act on the MLP only
            moved = [block.drop_paths[1]] + ([block.branch_scales[1]] if block.branch_scales else [])
            if cfg.input == "stream":  # the block's pre-MLP norm moves inside too, so the adapter sees the stream
                moved.append(block.norms[1])
            for part in moved:
                replace_module(block.module, part, nn.Identity())
            norm = block.norms[1] if cfg.input == "stream" else None
            layer_scale = block.branch_scales[1] if block.branch_scales else None
            block.set_part("mlp", AdaptMLP(block.mlp, adapter, cfg.scale, norm, layer_scale, block.drop_paths[1]))
        return model
