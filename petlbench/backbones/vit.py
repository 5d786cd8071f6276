"""timm's VisionTransformer and the weights it ships: ViT (augreg, orig in21k), DeiT, CLIP, DINOv2, MAE, MoCo v3."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from petlbench.backbones.anatomy import Anatomy, Block, norm_or_none


def matches(model: nn.Module) -> bool:
    return isinstance(model, VisionTransformer)


def read(model: VisionTransformer) -> Anatomy:
    dim = int(model.embed_dim)
    blocks = []
    for i, blk in enumerate(model.blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        blocks.append(Block(
            container=model.blocks, key=str(i), module=blk, in_dim=dim, dim=dim,
            attn=attn, qkv=_linear(attn, "qkv"), attn_proj=_linear(attn, "proj"),
            mlp=mlp, fc1=_linear(mlp, "fc1"), fc2=_linear(mlp, "fc2"),
            norms=tuple(n for n in (getattr(blk, "norm1", None), getattr(blk, "norm2", None)) if n is not None),
            heads=getattr(attn, "num_heads", None),
            branch_scales=tuple(s for s in (getattr(blk, "ls1", None), getattr(blk, "ls2", None)) if s is not None),
            drop_paths=tuple(d for d in (getattr(blk, "drop_path1", None), getattr(blk, "drop_path2", None))
                             if d is not None)))
    patch = tuple(getattr(model.patch_embed, "patch_size", (16, 16)))
    size = tuple(getattr(model.patch_embed, "img_size", (224, 224)))
    return Anatomy("vit", blocks, "tokens", model.patch_embed, dim, size,
                   num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)), patch_size=patch,
                   final_norm=model.norm, head_norm=norm_or_none(getattr(model, "fc_norm", None)))


def _linear(parent, name: str) -> nn.Linear | None:
    found = getattr(parent, name, None)
    return found if isinstance(found, nn.Linear) else None
