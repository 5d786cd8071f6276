"""timm's ConvNeXt: stages of blocks (depth-wise conv, norm, MLP) on (B, C, H, W) maps."""
from __future__ import annotations

from timm.models.convnext import ConvNeXt
from torch import nn

from petlbench.backbones.anatomy import Anatomy, Block, norm_or_none, stage_downsamples
from petlbench.backbones.vit import _linear


def matches(model: nn.Module) -> bool:
    return isinstance(model, ConvNeXt)


def read(model: ConvNeXt) -> Anatomy:
    blocks = []
    for s, stage in enumerate(model.stages):
        for i, blk in enumerate(stage.blocks):
            conv = blk.conv_dw
            blocks.append(Block(
                container=stage.blocks, key=str(i), module=blk, in_dim=int(conv.in_channels),
                dim=int(conv.out_channels), stage=s, attn=conv, mlp=blk.mlp, fc1=_linear(blk.mlp, "fc1"),
                fc2=_linear(blk.mlp, "fc2"), norms=(blk.norm,), convs=(conv,)))
    first = model.stages[0].blocks[0].conv_dw.in_channels
    return Anatomy("convnext", blocks, "nchw", model.stem, int(first), _input_size(model),
                   final_norm=getattr(model, "norm_pre", None), downsamples=stage_downsamples(model.stages),
                   head_norm=norm_or_none(getattr(model.head, "norm", None)))


def _input_size(model: nn.Module) -> tuple[int, int]:
    size = model.pretrained_cfg.get("input_size", (3, 224, 224)) if getattr(model, "pretrained_cfg", None) else None
    return tuple(size[-2:]) if size else (224, 224)
