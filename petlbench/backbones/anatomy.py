"""The shared vocabulary of backbone anatomy: a Block (one residual block and its parts) and the Anatomy."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

ALL_FAMILIES = ("vit", "swin", "convnext", "resnet")
NORMS = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)


@dataclass
class Block:
    """One residual block, in depth order, with the parts methods adapt.

    Parts a family lacks are None (a ResNet block has no attention). `container[key]` holds the block,
    so a method can wrap it (`replace`); `module.<attr>` holds each part, so a method can wrap a part
    (`set_part("mlp", nn.Sequential(block.mlp, adapter))`).
    """
    container: nn.Module
    key: str
    module: nn.Module
    in_dim: int  # width (channels) of the block's input
    dim: int  # width of its output
    stage: int = 0
    attn: nn.Module | None = None  # token mixer: attention (transformers) or depth-wise conv (ConvNeXt)
    qkv: nn.Linear | None = None  # fused q, k, v projection: out rows are [q; k; v], each `dim` wide
    attn_proj: nn.Linear | None = None  # attention output projection
    mlp: nn.Module | None = None
    fc1: nn.Linear | None = None
    fc2: nn.Linear | None = None
    norms: tuple[nn.Module, ...] = ()
    convs: tuple[nn.Conv2d, ...] = ()  # ConvNets: the block's convolutions in order
    acts: tuple[nn.Module, ...] = ()  # ResNets: the activation after each conv's norm (the last after the sum)
    heads: int | None = None  # attention heads (transformers)
    # what scales each residual branch (attention, MLP) before it is added: LayerScale, or nn.Identity
    branch_scales: tuple[nn.Module, ...] = ()
    # the stochastic depth of each residual branch (attention, MLP): DropPath, or nn.Identity at rate 0
    drop_paths: tuple[nn.Module, ...] = ()

    def replace(self, new: nn.Module) -> None:
        """Put `new` where the block was (it should call the old block)."""
        setattr(self.container, self.key, new)

    def set_part(self, name: str, new: nn.Module) -> None:
        """Replace the block's attribute `name` ('attn', 'mlp', ...) by `new`."""
        setattr(self.module, name, new)


@dataclass
class Anatomy:
    family: str
    blocks: list[Block]
    layout: Literal["tokens", "nhwc", "nchw"]  # vit: (B, prefix + H*W, C); swin: (B, H, W, C); ConvNets: (B, C, H, W)
    embed: nn.Module  # patch embedding or stem
    embed_dim: int  # width after the embedding
    input_size: tuple[int, int]
    num_prefix_tokens: int = 0  # vit: class (and register) tokens before the patch tokens
    patch_size: tuple[int, int] | None = None
    final_norm: nn.Module | None = None
    extra: dict = field(default_factory=dict)
    head_norm: nn.Module | None = None  # a norm after pooling, before the classifier (ViT fc_norm, ConvNeXt head.norm)
    # stage -> what opens that stage before its first block (Swin patch merging, ConvNeXt norm + strided conv);
    # ResNets downsample inside their blocks, ViTs never
    downsamples: dict[int, nn.Module] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def norm_layers(self, model: nn.Module) -> list[nn.Module]:
        """Every norm layer of the backbone (LayerNorm, BatchNorm, GroupNorm and their timm subclasses),
        the head's excluded."""
        head = set(map(id, model.get_classifier().modules()))
        return [m for m in model.modules() if isinstance(m, NORMS) and id(m) not in head]


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` where `old` sits inside `root` (a stem, a head, one conv of a block), found by identity."""
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ValueError(f"{type(old).__name__} is not a submodule of {type(root).__name__}")


def norm_or_none(module: nn.Module | None) -> nn.Module | None:
    """The module if it is a norm layer (not an nn.Identity standing in for one), else None."""
    return module if isinstance(module, NORMS) else None


def stage_downsamples(stages) -> dict[int, nn.Module]:
    """{stage index: its `downsample`} for stages that have one with parameters."""
    found = {s: getattr(stage, "downsample", None) for s, stage in enumerate(stages)}
    return {s: m for s, m in found.items() if m is not None and any(True for _ in m.parameters())}
