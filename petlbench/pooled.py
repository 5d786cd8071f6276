"""Trained values kept in one budget tensor (SPT): frozen layers that read their deltas and structured modules from it.

SPT (He et al., ICCV 2023) decides from the task's data where its trainable parameters go: which weight entries
train in place (unstructured), which weight matrices get a LoRA or an adapter (structured). Only the total is fixed
(the budget). So every trained value lives in one 1-D `Pool`, sized by the budget before any data is seen (planning
counts it exactly), and each wrapped layer holds buffers saying which slice of the pool is its own: the flat
positions of its tuned weight and bias entries, and where its structured module's weights start (-1: none). The
buffers are resized when a saved task loads, so a fresh build without data rebuilds the trained model.

The pool is registered once, on the model (`spt_pool`); each wrapper reaches it through a plain attribute, not as a
child, so it is counted, saved and optimised once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

NONE = -1  # a structured offset meaning "no structured module here"


class Pool(nn.Module):
    """The budget: every value SPT trains (but the class token and the head), one 1-D tensor."""

    def __init__(self, size: int, like: torch.Tensor):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(size, device=like.device, dtype=like.dtype))


class Pooled(nn.Module):
    """Shared by the wrappers: deltas on chosen entries of a frozen weight and bias, offsets into the pool."""

    def _init_pooled(self, pool: Pool, slots: int) -> None:
        self.__dict__["pool"] = pool  # not a child: the pool is registered once, on the model
        device = pool.values.device
        self.register_buffer("weight_index", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("bias_index", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("offsets", torch.full((slots,), NONE, dtype=torch.long, device=device))
        self._offsets: list[int] = [NONE] * slots

    def set_layout(self, weight_index: torch.Tensor, bias_index: torch.Tensor, offsets: list[int]) -> None:
        device = self.offsets.device
        self.weight_index = weight_index.to(device=device, dtype=torch.long)
        self.bias_index = bias_index.to(device=device, dtype=torch.long)
        self.offsets = torch.tensor(offsets, dtype=torch.long, device=device)
        self._offsets = list(offsets)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("weight_index", "bias_index", "offsets"):  # a saved layout has its own sizes
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.offsets.is_meta:
            self._offsets = self.offsets.tolist()

    def _delta(self, tensor: torch.Tensor | None, index: torch.Tensor, start: int) -> torch.Tensor | None:
        """The frozen tensor with the pool's values added at its tuned entries."""
        if tensor is None or start == NONE or not len(index):
            return tensor
        values = self.pool.values[start:start + len(index)].to(tensor.dtype)
        return tensor.flatten().index_add(0, index, values).view_as(tensor)


def structured_size(kind: str, rank: int, in_dim: int, out_dim: int) -> int:
    """A LoRA's (A: r x in, B: out x r) or an adapter's (down: r x out + r, up: out x r + out) count, as SPT's
    get_structured_param_num: the adapter acts on the layer's output width."""
    return rank * (in_dim + out_dim) if kind == "lora" else 2 * rank * out_dim + rank + out_dim


class PooledLinear(Pooled):
    """A frozen Linear; from the pool, deltas on its tuned entries and, where placed, a LoRA beside it
    (y + dp(B A drop(x))) or an adapter after it (y + dp(up gelu(down drop(y)))); an adapter on the attention
    projection reads the projection's input, as SPT's AttentionSPTSeq. `dropout` is not applied on that
    projection's input (SPT's structured_drop is not either)."""

    def __init__(self, layer: nn.Linear, pool: Pool, kind: str, rank: int, on_proj: bool,
                 dropout: float, drop_path: float):
        super().__init__()
        self.layer, self.kind, self.rank, self.on_proj = layer, kind, rank, on_proj
        self.dropout = nn.Identity() if on_proj or not dropout else nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()
        self._init_pooled(pool, 3)  # weight entries, bias entries, structured module

    def structured_size(self) -> int:
        return structured_size(self.kind, self.rank, self.layer.in_features, self.layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_at, b_at, s_at = self._offsets
        layer = self.layer
        y = F.linear(x, self._delta(layer.weight, self.weight_index, w_at),
                     self._delta(layer.bias, self.bias_index, b_at))
        if s_at == NONE:
            return y
        values, r, n_in, n_out = self.pool.values, self.rank, layer.in_features, layer.out_features
        if self.kind == "lora":
            a = values[s_at:s_at + r * n_in].view(r, n_in)
            b = values[s_at + r * n_in:s_at + r * (n_in + n_out)].view(n_out, r)
            return y + self.drop_path(F.linear(F.linear(self.dropout(x), a.to(x.dtype)), b.to(x.dtype)))
        at = s_at
        down = values[at:at + r * n_out].view(r, n_out); at += r * n_out
        down_b = values[at:at + r]; at += r
        up = values[at:at + n_out * r].view(n_out, r); at += n_out * r
        up_b = values[at:at + n_out]
        source = x if self.on_proj else y  # sequential after the layer; beside the attention projection
        h = F.gelu(F.linear(self.dropout(source), down.to(y.dtype), down_b.to(y.dtype)))
        return y + self.drop_path(F.linear(h, up.to(y.dtype), up_b.to(y.dtype)))

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """The Linear with its deltas and LoRA (B A) folded into its weight and bias; adapters do not fold."""
        w_at, b_at, s_at = self._offsets
        layer = self.layer
        weight = self._delta(layer.weight, self.weight_index, w_at)
        if s_at != NONE:
            if self.kind != "lora":
                raise ValueError("an adapter (a GELU between two Linears) does not fold into the weight")
            r, n_in, n_out = self.rank, layer.in_features, layer.out_features
            a = self.pool.values[s_at:s_at + r * n_in].view(r, n_in)
            b = self.pool.values[s_at + r * n_in:s_at + r * (n_in + n_out)].view(n_out, r)
            weight = weight + (b @ a).to(weight.dtype)
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(self._delta(layer.bias, self.bias_index, b_at))
        return layer

    @torch.no_grad()
    def init_structured(self, values: torch.Tensor) -> None:
        """Write the structured module's start into its pool slice: SPT's StructuredTuningModule init (A, down:
        Kaiming-uniform a=sqrt(5); the down bias nn.Linear's default; B, up and its bias zero: starts unchanged)."""
        r, n_in, n_out = self.rank, self.layer.in_features, self.layer.out_features
        fan_in = n_in if self.kind == "lora" else n_out
        first = torch.empty(r, fan_in, dtype=values.dtype, device=values.device)
        nn.init.kaiming_uniform_(first, a=5 ** 0.5)
        values[:first.numel()] = first.flatten()
        if self.kind == "adapter":
            bound = 1 / fan_in ** 0.5
            values[first.numel():first.numel() + r] = torch.empty(r, dtype=values.dtype,
                                                                  device=values.device).uniform_(-bound, bound)


class PooledNorm(Pooled):
    """A frozen LayerNorm with the pool's deltas on its tuned weight and bias entries."""

    def __init__(self, norm: nn.LayerNorm, pool: Pool):
        super().__init__()
        self.norm = norm
        self._init_pooled(pool, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_at, b_at = self._offsets
        norm = self.norm
        return F.layer_norm(x, norm.normalized_shape, self._delta(norm.weight, self.weight_index, w_at),
                            self._delta(norm.bias, self.bias_index, b_at), norm.eps)

    @torch.no_grad()
    def fold(self) -> nn.LayerNorm:
        w_at, b_at = self._offsets
        self.norm.weight.copy_(self._delta(self.norm.weight, self.weight_index, w_at))
        self.norm.bias.copy_(self._delta(self.norm.bias, self.bias_index, b_at))
        return self.norm
