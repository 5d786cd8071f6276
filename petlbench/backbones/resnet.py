"""timm's ResNet (and its variants built by the same class): BasicBlock / Bottleneck stages on (B, C, H, W)."""
from __future__ import annotations

from timm.models.resnet import ResNet
from torch import nn

from petlbench.backbones.anatomy import Anatomy, Block
from petlbench.backbones.convnext import _input_size


def matches(model: nn.Module) -> bool:
    return isinstance(model, ResNet)


def read(model: ResNet) -> Anatomy:
    blocks = []
    for s, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        stage = getattr(model, name)
        for i, blk in enumerate(stage):
            convs = tuple(m for m in (getattr(blk, f"conv{k}", None) for k in (1, 2, 3)) if isinstance(m, nn.Conv2d))
            norms = tuple(m for m in (getattr(blk, f"bn{k}", None) for k in (1, 2, 3)) if m is not None)
            acts = tuple(m for m in (getattr(blk, f"act{k}", None) for k in (1, 2, 3)) if m is not None)
            blocks.append(Block(container=stage, key=str(i), module=blk, in_dim=int(convs[0].in_channels),
                                dim=int(convs[-1].out_channels), stage=s, norms=norms, convs=convs, acts=acts))
    # the stem's width is what the first block reads (conv1 may be a deep stem, or wrapped by a method)
    # CLIP's ResNet towers pool by attention over a grid of learned positions (petlbench.clip_resnet): one input size
    extra = {"fixed_input": "CLIP's attention pool has a position per cell"} if getattr(
        model.global_pool, "positional_embedding", None) is not None else {}
    return Anatomy("resnet", blocks, "nchw", model.conv1, blocks[0].in_dim, _input_size(model), extra=extra)
