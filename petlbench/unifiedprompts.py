"""Unified prompts (UPT, Zang et al. 2022, as MVLPT's MUPT runs them): one set of learned tokens, text context and
deep visual prompts together, passed through a small transformer layer and split into the text tower's context and
the image tower's per-layer prompts.

sIncerass/MVLPT trainers/mvlpt.py (forward_mvlpt_proj): the text context (n, text width) and the visual prompts
(layers x n, image width) are each mapped to PROJECT_DIM (128) by a linear layer (when their width differs), joined
text first, run through clip/model.py's `Transformer(width=128, layers=1, heads=1)` (QuickGELU, MLP ratio 4),
split, and mapped back by a linear layer each. The released code hands that transformer a (1, tokens, 128) tensor,
which its sequence-first attention reads as `tokens` sequences of length one: every token attends to itself only,
so the layer mixes nothing between tokens (`joint=False`, the default, reproduces it). `joint=True` lets every
token attend to every other, as UPT describes its shared layer.

The module is shared: each prompted block's `InsertUnified` and the `UnifiedHead` hold it (registered in each, as a
prompt head registers the shared text tower) and run it when they need their part. A one-layer width-128 pass over
a few dozen tokens per consumer costs nothing beside the towers, and keeps the forward free of state between calls.
"""
from __future__ import annotations

import torch
from torch import nn

from petlbench.textheads import ClipText
from petlbench.textprompts import PromptHead


def to_width(width: int, dim: int) -> tuple[nn.Module, nn.Module]:
    """The linear maps into and out of the transformer's width; none when the widths agree (as released)."""
    if width == dim:
        return nn.Identity(), nn.Identity()
    return nn.Linear(width, dim), nn.Linear(dim, width)


class UnifiedPrompts(nn.Module):
    """Text context (n_text, text width) and visual prompts (layers, n_visual, image width) through one shared
    transformer layer of width `dim`; `forward()` -> (context, prompts) in those shapes."""

    def __init__(self, ctx: torch.Tensor, visual: torch.Tensor, dim: int = 128, joint: bool = False):
        super().__init__()
        from open_clip.transformer import QuickGELU, Transformer
        self.ctx = nn.Parameter(ctx)  # (n_text, text width): MVLPT's COOP ctx
        self.visual = nn.Parameter(visual)  # (layers, n_visual, image width): vpt_embeddings then the deep ones
        self.text_in, self.text_out = to_width(ctx.shape[-1], dim)
        self.visual_in, self.visual_out = to_width(visual.shape[-1], dim)
        self.mixer = Transformer(dim, layers=1, heads=1, act_layer=QuickGELU)  # batch first
        self.joint = joint

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        n_text, (layers, n_visual, width) = self.ctx.shape[0], self.visual.shape
        tokens = torch.cat([self.text_in(self.ctx), self.visual_in(self.visual.reshape(-1, width))])  # (S, dim)
        mixed = self.mixer(tokens[None] if self.joint else tokens[:, None])  # (1, S, d), or S of (1, d)
        mixed = mixed.reshape(tokens.shape)
        ctx = self.text_out(mixed[:n_text])
        return ctx, self.visual_out(mixed[n_text:]).reshape(layers, n_visual, width)

    def extra_repr(self) -> str:
        return f"text_tokens={self.ctx.shape[0]}, visual={tuple(self.visual.shape)}, joint={self.joint}"


class InsertUnified(nn.Module):
    """Insert one layer's visual prompts from the shared unified prompts at `position` (after the class token)."""

    def __init__(self, unified: UnifiedPrompts, layer: int, position: int, dropout: float = 0.0):
        super().__init__()
        self.unified, self.layer, self.position = unified, layer, position
        self.dropout = nn.Dropout(dropout)  # MVLPT's VPT.DROPOUT, on the prompts after the shared layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout(self.unified()[1][self.layer]).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x[:, :self.position], p, x[:, self.position:]], dim=1)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, position={self.position}"


class UnifiedHead(PromptHead):
    """CoOp's classifier whose context is the unified prompts' text part."""

    def __init__(self, text: ClipText, unified: UnifiedPrompts, position: str):
        super().__init__(text, unified.ctx.shape[0], position, "mvlpt")
        self.unified = unified

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(x) @ self.text_features(self.unified()[0]).T
