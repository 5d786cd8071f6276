"""What a method may ask about one layer of a backbone, wherever it sits (SSF scales every layer's channels)."""
from __future__ import annotations

from timm.layers import LayerNorm2d, LayerNorm2dFp32
from timm.layers.norm import LayerNormExp2d
from torch import nn

# Layers whose output holds its channels on axis 1, (B, C, H, W); every other layer keeps them last, (..., C).
CHANNELS_FIRST = (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm, LayerNorm2d, LayerNorm2dFp32, LayerNormExp2d)


def channel_axis(layer: nn.Module) -> int:
    """1 for convolutions and norms on (B, C, H, W) maps (timm's LayerNorm2d included), -1 for Linear and
    LayerNorm on (..., C) tokens."""
    return 1 if isinstance(layer, CHANNELS_FIRST) else -1
