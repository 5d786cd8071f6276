"""RepAdapter (Luo et al., 2023, "Towards Efficient Visual Adaption via Structural Re-parameterization"): a
linear sequential adapter on the input of the attention and of the MLP, folded into the frozen weights after
training.

The adapter is x + s * (B(dropout(A x + a)) + b): A a dense d -> h projection (Xavier-uniform, zero bias), B a
group-wise h -> d projection (g groups; group i maps hidden channels i*h/g.. to output channels i*d/g..; zero
weight and bias, so the model starts unchanged), dropout 0.1 between them, s a fixed scale. As
luogen1996/RepAdapter repadapter.py (RepAdapter, forward_vit_block_adapter): `attn(adapter_attn(norm1(x)))`
and `mlp(adapter_mlp(norm2(x)))` ("repblock"; "repattn" only the first). The first op of timm's attention
(ViT and Swin's window attention) on its input is the fused qkv Linear, and of its MLP fc1; the adapter is
per-token, so it commutes with Swin's shift and window partition. Here it therefore wraps qkv and fc1
(`Adapted`): the same function, and the Linear it folds into sits in the same module. Without dropout the
adapter is the affine map M x + c, M = I + s B A, c = s (B a + b), so qkv(adapter(x)) = (W M) x + (W c + w),
exactly as the official set_RepWeight / reparameterize.

ViT-B/16 at h = 8, g = 2: per adapter d*h + h + d*h/g + d = 9,992; 24 adapters = 239,808 (PETL_Vision's
inserted_parameters: 19,216 x 24 = 461,184 at h = 16, the same formula).

Weight decay: every trained tensor, the head's bias included: RepAdapter's train.py passes all of them to one
AdamW(trainable, lr=1e-3, weight_decay=1e-4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SOURCE = ("bottleneck 8, groups 2, dropout 0.1, repblock: luogen1996/RepAdapter train.py (--dim 8, --method "
          "repblock) and repadapter.py (RepAdapter); scale 0.1: the most common in configs/repblock/*.yaml (6 of 19 "
          "tasks; also in configs/repattn, 5 of 19); AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, "
          "drop-path 0.1: train.py, dataset.py")


@dataclass
class RepAdapterConfig:
    bottleneck: Annotated[int, Range(min=1)] = 8  # h
    groups: Annotated[int, Range(min=1)] = 2  # g, of the up-projection B
    scale: float = 0.1  # s
    dropout: Annotated[float, Range(min=0.0, max=1.0)] = 0.1
    placement: Literal["block", "attn"] = "block"  # repblock: before attention and MLP; repattn: attention only


class RepAdapterBranch(nn.Module):
    """x + s * (B(dropout(A x + a)) + b), B group-wise; on the last dim of tokens."""

    def __init__(self, dim: int, bottleneck: int, groups: int, scale: float, dropout: float):
        super().__init__()
        self.groups, self.scale = groups, scale
        self.down = nn.Linear(dim, bottleneck)
        self.dropout = nn.Dropout(dropout)
        # B as RepAdapter's Conv1d(h, d, 1, groups=g) weight: row o reads the hidden channels of its group
        self.up_weight = nn.Parameter(torch.zeros(dim, bottleneck // groups))
        self.up_bias = nn.Parameter(torch.zeros(dim))
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def up(self, z: torch.Tensor) -> torch.Tensor:
        g = self.groups
        z = z.unflatten(-1, (g, -1))  # (..., g, h/g)
        w = self.up_weight.unflatten(0, (g, -1))  # (g, d/g, h/g)
        return torch.einsum("...gk,gok->...go", z, w).flatten(-2) + self.up_bias

    def forward(self, x):
        return x + self.scale * self.up(self.dropout(self.down(x)))

    def dense_up(self) -> torch.Tensor:
        """B as a dense d x h matrix (block-diagonal)."""
        return torch.block_diag(*self.up_weight.unflatten(0, (self.groups, -1)))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with adapter(x) = M x + c when dropout is off."""
        up = self.dense_up()
        eye = torch.eye(up.shape[0], dtype=up.dtype, device=up.device)
        return eye + self.scale * up @ self.down.weight, self.scale * (up @ self.down.bias + self.up_bias)


class Adapted(nn.Module):
    """layer(adapter(x)): a frozen Linear fed through a RepAdapter branch; `fold` returns the Linear alone."""

    def __init__(self, adapter: RepAdapterBranch, layer: nn.Linear):
        super().__init__()
        self.adapter, self.layer = adapter, layer

    def forward(self, x):
        return self.layer(self.adapter(x))

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        m, c = (t.double() for t in self.adapter.affine())
        layer = self.layer
        weight = layer.weight.double()
        bias = layer.bias.double() if layer.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(layer.weight[:, 0]), requires_grad=False)
        layer.bias.copy_((weight @ c + bias).to(layer.bias.dtype))
        layer.weight.copy_((weight @ m).to(layer.weight.dtype))
        return layer


class RepAdapter(Method):
    name = "repadapter"
    description = "re-parameterisable group-wise linear adapters before attention and MLP (fold into qkv and fc1)"
    paper = "RepAdapter (Luo et al., 2023, arXiv 2302.08106)"
    Config = RepAdapterConfig
    families = ("vit", "swin")  # blocks whose attention starts with a fused qkv Linear and MLP with fc1
    recipe = "noah"  # RepAdapter's train.py: AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, drop-path 0.1
    decay_rule = "all"  # see the module docstring
    defaults_source = SOURCE

    def check_fit(self, model):
        cfg = self.config
        blocks = anatomy(model, self.name).blocks
        refuse_above(self, "option 'bottleneck'", cfg.bottleneck, min(b.dim for b in blocks),
                     "the width of the blocks it adapts")
        for b in blocks:
            if cfg.bottleneck % cfg.groups or b.dim % cfg.groups:
                raise UserError(f"method {self.name}: option 'groups' is {cfg.groups}, which must divide the "
                                f"bottleneck ({cfg.bottleneck}) and the block width ({b.dim})")
            if b.qkv is None or (cfg.placement == "block" and b.fc1 is None):
                raise UserError(f"method {self.name}: a block lacks the fused qkv (or MLP fc1) Linear that "
                                "RepAdapter folds into")

    def apply(self, model):
        cfg = self.config
        for block in anatomy(model, self.name).blocks:
            targets = [(block.attn, block.qkv)]
            if cfg.placement == "block":
                targets.append((block.mlp, block.fc1))
            for parent, layer in targets:
                branch = RepAdapterBranch(layer.in_features, cfg.bottleneck, cfg.groups, cfg.scale, cfg.dropout)
                _put(parent, layer, Adapted(branch, layer))
        return model

    def merge(self, model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Adapted):
                    setattr(parent, name, child.fold())
        return model


def _put(parent: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Replace the direct child `old` of `parent` (found by identity) by `new`."""
    for name, child in parent.named_children():
        if child is old:
            setattr(parent, name, new)
            return
    raise UserError(f"repadapter: {type(old).__name__} is not a direct part of {type(parent).__name__}")
