"""What methods need to know about a timm Vision Transformer, checked in one place."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from petlbench.errors import UserError


@dataclass
class ViTParts:
    blocks: nn.Sequential  # model.blocks: methods replace entries of it
    embed_dim: int
    num_prefix_tokens: int  # class token (+ register tokens); prompts go right after them
    patch_size: tuple[int, int]


def vit_parts(model: nn.Module, method: str) -> ViTParts:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "embed_dim"):
        raise UserError(
            f"method {method!r} needs a timm VisionTransformer-style backbone (model.blocks, model.embed_dim); "
            f"got {type(model).__name__}")
    patch_embed = getattr(model, "patch_embed", None)
    patch = tuple(getattr(patch_embed, "patch_size", (16, 16)))
    return ViTParts(blocks, int(model.embed_dim), int(getattr(model, "num_prefix_tokens", 1)), patch)
