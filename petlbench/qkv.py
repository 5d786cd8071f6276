"""q, k and v as three Linears, and the Linears a weight-space tuner (LoRA, LoKr, IA3, ...) adapts.

timm fuses a block's q, k and v projections into one `qkv` Linear (output rows [q; k; v]). LoRA adapts q and v
alone (Hu et al. 2021, section 7.1), so the fused Linear is split structurally: `SplitQKV` holds three Linears with
the fused weights whose concatenated output is the fused output, and `fuse_qkv` puts the one Linear back (a merged
export has exactly the backbone's architecture). Targets are named as `model.named_modules()` names them, found by
identity, so peft is handed exact module names, never a pattern.
"""
from __future__ import annotations

import torch
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError

TARGETS = ("q", "k", "v", "o", "fc1", "fc2")  # o: the attention output projection


class SplitQKV(nn.Module):
    """The fused qkv Linear as three Linears q, k, v (same weights, same requires_grad); output [q(x), k(x), v(x)]."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        if fused.out_features % 3:
            raise UserError(f"a fused qkv Linear has 3 x width outputs, not {fused.out_features}")
        width, bias = fused.out_features // 3, fused.bias is not None
        parts = []
        for i in range(3):
            part = nn.Linear(fused.in_features, width, bias=bias, device=fused.weight.device, dtype=fused.weight.dtype)
            with torch.no_grad():
                part.weight.copy_(fused.weight[i * width:(i + 1) * width])
                if bias:
                    part.bias.copy_(fused.bias[i * width:(i + 1) * width])
            for mine, theirs in ((part.weight, fused.weight), (part.bias, fused.bias)):
                if mine is not None:
                    mine.requires_grad_(theirs.requires_grad)
            parts.append(part)
        self.q, self.k, self.v = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def fused(self) -> nn.Linear:
        """One Linear with the three weights stacked (each part must be a plain Linear again, e.g. after a merge)."""
        parts = (self.q, self.k, self.v)
        if not all(type(p) is nn.Linear for p in parts):
            raise UserError("fuse q, k and v only once every adapter on them is merged into their weights")
        first = parts[0]
        fused = nn.Linear(first.in_features, 3 * first.out_features, bias=first.bias is not None,
                          device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in parts]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in parts]))
        fused.requires_grad_(False)
        return fused


def split_qkv(block, method: str) -> SplitQKV:
    """Replace the block's fused qkv Linear (inside its attention) by a SplitQKV; return it."""
    if block.qkv is None or block.attn is None:
        raise UserError(f"{method}: a block has no fused qkv Linear to split into q, k and v")
    split = SplitQKV(block.qkv)
    replace_module(block.attn, block.qkv, split)
    return split


def fuse_qkv(model: nn.Module) -> nn.Module:
    """Put one fused qkv Linear back wherever a SplitQKV sits."""
    for split in [m for m in model.modules() if isinstance(m, SplitQKV)]:
        replace_module(model, split, split.fused())
    return model


def target_linears(model: nn.Module, targets: list[str], method: str) -> dict[str, str]:
    """{full module name: target} for the targeted Linears of every block (q, k, v split out of qkv if asked for)."""
    wanted = []
    for i, block in enumerate(anatomy(model, method).blocks):
        layers = {"o": block.attn_proj, "fc1": block.fc1, "fc2": block.fc2}
        if {"q", "k", "v"} & set(targets):
            split = split_qkv(block, method)
            layers.update(q=split.q, k=split.k, v=split.v)
        for target in dict.fromkeys(targets):
            layer = layers[target]
            if not isinstance(layer, nn.Linear):
                raise UserError(f"{method}: block {i} has no {target!r} Linear to adapt")
            wanted.append((layer, target))
    names = {id(module): name for name, module in model.named_modules()}
    return {names[id(layer)]: target for layer, target in wanted}
