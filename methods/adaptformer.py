"""AdaptFormer (Chen et al., NeurIPS 2022): a scaled bottleneck beside each block's MLP ("AdaptMLP").

    x_out = x + MLP(LN(x)) + s * up(dropout(relu(down(a))))

As ShoufaChen/AdaptFormer (models/adapter.py, models/custom_modules.py, main_image.py): ReLU, dropout 0.1 on
the bottleneck, s = 0.1, LoRA's init (down Kaiming-uniform, up and both biases zero: the model starts
unchanged), no norm inside the adapter. What the adapter reads, `a`:
- "stream" (the released code, ffn_adapter_layernorm_option "none"; also Adapter+'s and PETL_Vision's
  AdaptFormer): the block's residual stream before the MLP's norm. The block's pre-MLP norm moves into the
  wrapper, which computes mlp(norm(x)) + s * adapter(x).
- "norm" (the paper's Eq. 3, LN(x')): the MLP's own normalised input.
Bottleneck 8 is the 0.16M AdaptFormer of the VTAB-1k tables: 12 x (768*8+8 + 8*768+768) = 156,768 on
ViT-B/16 (the paper's own default, 64, is 1.19M). Non-linear, so it does not merge.

The adapter sits inside the block's MLP branch, so drop-path (and LayerScale, where a model has it) act on
it with the MLP; the released code adds it after the MLP's drop-path.

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
    """mlp(norm(x)) + scale * adapter(x): `norm` is the block's pre-MLP norm when the adapter reads the
    stream, an identity when the block still normalises x before calling this module."""

    def __init__(self, mlp: nn.Module, adapter: Bottleneck, scale: float, norm: nn.Module | None = None):
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.mlp = mlp
        self.adapter = adapter
        self.scale = scale

    def forward(self, x):
        return self.mlp(self.norm(x)) + self.scale * self.adapter(x)


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
            if block.mlp is None or len(block.norms) != 2:
                raise UserError(f"{self.name}: block {i} lacks the pre-attention and pre-MLP norms and the MLP "
                                "AdaptFormer sits beside")
            adapter = Bottleneck(block.dim, cfg.bottleneck, cfg.dropout)
            norm = None
            if cfg.input == "stream":  # the block's pre-MLP norm moves inside, so the adapter sees the stream
                norm = block.norms[1]
                replace_module(block.module, norm, nn.Identity())
            block.set_part("mlp", AdaptMLP(block.mlp, adapter, cfg.scale, norm))
        return model
