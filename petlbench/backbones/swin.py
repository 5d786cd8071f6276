"""timm's SwinTransformer: stages of window-attention blocks on (B, H, W, C) tokens."""
from __future__ import annotations

from timm.models.swin_transformer import SwinTransformer
from torch import nn

from petlbench.backbones.anatomy import Anatomy, Block, stage_downsamples
from petlbench.backbones.vit import _linear


def matches(model: nn.Module) -> bool:
    return isinstance(model, SwinTransformer)


def read(model: SwinTransformer) -> Anatomy:
    blocks = []
    for s, stage in enumerate(model.layers):
        for i, blk in enumerate(stage.blocks):
            dim = int(blk.norm1.normalized_shape[0])
            blocks.append(Block(
                container=stage.blocks, key=str(i), module=blk, in_dim=dim, dim=dim, stage=s,
                attn=blk.attn, qkv=_linear(blk.attn, "qkv"), attn_proj=_linear(blk.attn, "proj"),
                mlp=blk.mlp, fc1=_linear(blk.mlp, "fc1"), fc2=_linear(blk.mlp, "fc2"), norms=(blk.norm1, blk.norm2),
                drop_paths=(blk.drop_path1, blk.drop_path2)))
    return Anatomy("swin", blocks, "nhwc", model.patch_embed, int(model.embed_dim), tuple(model.patch_embed.img_size),
                   patch_size=tuple(model.patch_embed.patch_size), final_norm=model.norm,
                   downsamples=stage_downsamples(model.layers))
