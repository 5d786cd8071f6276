"""Bottleneck adapters (Houlsby et al., 2019) inserted after sub-layers of every ViT block.

Default: bottleneck 8 after the MLP of each block, the 0.16M-parameter adapter of the VTAB-1k tables
(12 x (768*8+8 + 8*768+768) = 156,768 on ViT-B/16). The adapter is residual, x + up(act(down(x))),
and starts near the identity.

Weight decay: timm's rule (no decay on 1-d tensors and biases): NOAH, whose recipe and adapter numbers
these are, trains through timm's create_optimizer (supernet_train_prompt.py).
"""
from dataclasses import dataclass
from typing import Annotated, Literal

from torch import nn

from petlbench.method import Method, refuse_above
from petlbench.options import Range
from petlbench.backbones import anatomy


@dataclass
class AdapterConfig:
    bottleneck: Annotated[int, Range(min=1)] = 8
    placement: Literal["mlp", "attn", "both"] = "mlp"  # which sub-layer outputs get an adapter
    scale: float = 1.0
    init: Literal["houlsby", "zeros"] = "houlsby"  # houlsby: N(0, 0.01); zeros: up-projection zero


class Bottleneck(nn.Module):
    """Residual bottleneck: x + scale * up(gelu(down(x)))."""

    def __init__(self, dim: int, bottleneck: int, scale: float, init: str):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        if init == "zeros":
            nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return x + self.scale * self.up(self.act(self.down(x)))


class Adapter(Method):
    name = "adapter"
    description = "residual bottleneck adapters after the MLP and/or attention of each block"
    paper = "Houlsby et al., ICML 2019; VTAB-1k numbers and recipe from NOAH (Zhang et al., 2022)"
    Config = AdapterConfig
    families = ("vit", "swin")  # needs each block's attention and MLP outputs (last dim = width)
    recipe = "noah"  # the 0.16M adapter numbers come from NOAH
    decay_rule = "timm"  # see the module docstring

    def check_fit(self, model):
        refuse_above(self, "option 'bottleneck'", self.config.bottleneck,
                     min(b.dim for b in anatomy(model, self.name).blocks), "the width of the blocks it adapts")

    def apply(self, model):
        cfg = self.config
        for block in anatomy(model, self.name).blocks:
            if cfg.placement in ("attn", "both"):
                block.set_part("attn", nn.Sequential(block.attn, Bottleneck(block.dim, cfg.bottleneck, cfg.scale, cfg.init)))
            if cfg.placement in ("mlp", "both"):
                block.set_part("mlp", nn.Sequential(block.mlp, Bottleneck(block.dim, cfg.bottleneck, cfg.scale, cfg.init)))
        return model
