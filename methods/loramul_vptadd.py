"""LoRAmul_VPTadd: PACE's base adapter (Ni et al., NeurIPS 2024; MaxwellYaoNi/PACE Vision/pace/residual_adapters.py),
a multiplicative LoRA plus VPT folded into a bias, on every Linear of every block (qkv, proj, fc1, fc2):

    y = W x + b + branch(x),   branch(x) = (W * (D U)) x + W (P_d P_u) + b * delta_b

with D (out x r) zero, U (r x in) Xavier-uniform, P_d (in x r) zero, P_u (r x 1) Xavier-uniform and delta_b zero, so
the model starts unchanged. W (P_d P_u) is what a learned prompt token adds through the Linear (VPT-as-bias), the
element-wise D U a multiplicative low-rank change of W. The branch is its own module (`Branch`, handed W and b by
`LoRAVPTLinear`) so PACE can perturb exactly the adapter's output; `merge` folds it: W (1 + D U), b (1 + delta_b) +
W P_d P_u. Per Linear (out, in): out r + r in + out + in r + r (without `out` where the Linear has no bias: the official
code's delta_b is then created but unused); on ViT-B/16 at rank 10 2,203,104 (qkv 40,714, proj
23,818, fc1 49,162, fc2 69,898, x12).

Departure: the official code computes the training forward in the merged form (one F.linear); here base + branch,
equal to float rounding (so PACE's noise, which needs the split, multiplies the same branch as the official
MultiplicativeNoiseAdapter). Weight decay: every trained tensor, as the official AdamW over the trained list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SOURCE = ("rank 10, AdamW lr 1e-3, wd 1e-4 (every trained tensor), batch 64, 300 epochs, warm-up 10, drop-path 0.1: "
          "MaxwellYaoNi/PACE Vision/train.py defaults and Vision/README.md's VTAB-1k (cifar) command, the one VTAB-1k "
          "setting released (few-shot flowers: rank 18, lr 5e-3, 100 epochs)")


@dataclass
class LoRAVPTConfig:
    rank: Annotated[int, Range(min=1)] = 10


class Branch(nn.Module):
    """The adapter's own output for a frozen Linear's (weight, bias): what PACE perturbs."""

    def __init__(self, out_features: int, in_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.down = nn.Parameter(torch.zeros(out_features, rank))
        self.up = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, in_features)))
        self.delta_bias = nn.Parameter(torch.zeros(out_features)) if bias else None  # scales the Linear's bias
        self.prompt_down = nn.Parameter(torch.zeros(in_features, rank))
        self.prompt_up = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, 1)))

    def weight_and_bias(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        delta_w = weight * (self.down @ self.up)
        delta_b = (weight @ (self.prompt_down @ self.prompt_up)).squeeze(-1)
        return delta_w, delta_b if bias is None else delta_b + bias * self.delta_bias

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, *self.weight_and_bias(weight, bias))


class LoRAVPTLinear(nn.Module):
    """A frozen Linear plus its branch (a branch PACE wrapped in noise is still called with W and b)."""

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        self.linear = linear
        self.branch = Branch(linear.out_features, linear.in_features, rank, bias=linear.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.branch(x, self.linear.weight, self.linear.bias)


class LoRAVPT(Method):
    name = "loramul_vptadd"
    description = "PACE's base: multiplicative LoRA and VPT as a bias on every block Linear (merges)"
    paper = "PACE (Ni et al., NeurIPS 2024), its LoRAmul_VPTadd baseline"
    Config = LoRAVPTConfig
    families = ("vit", "swin")  # blocks with qkv, proj, fc1, fc2 Linears
    recipe = "noah"
    train_defaults = {"epochs": 300}
    decay_rule = "all"
    defaults_source = SOURCE

    def check_fit(self, model):
        widths = [min(lin.in_features, lin.out_features) for lin in linears(model, self.name)]
        refuse_above(self, "option 'rank'", self.config.rank, min(widths), "the width of the narrowest Linear")

    def apply(self, model):
        for linear in linears(model, self.name):
            replace_module(model, linear, LoRAVPTLinear(linear, self.config.rank))
        return model

    def merge(self, model):
        for wrapped in [m for m in model.modules() if isinstance(m, LoRAVPTLinear)]:
            linear = wrapped.linear
            with torch.no_grad():
                delta_w, delta_b = wrapped.branch.weight_and_bias(linear.weight, linear.bias)
                linear.weight.add_(delta_w)
                if linear.bias is None:
                    linear.bias = nn.Parameter(delta_b.clone(), requires_grad=False)
                else:
                    linear.bias.add_(delta_b)
            replace_module(model, wrapped, linear)
        return model


def linears(model: nn.Module, method: str) -> list[nn.Linear]:
    """The Linears the official code adapts (every nn.Linear but the head's), found by type in each block and in
    Swin's patch merging."""
    body = anatomy(model, method)
    parts = [block.module for block in body.blocks] + list(body.downsamples.values())
    return [m for part in parts for m in part.modules() if type(m) is nn.Linear]
