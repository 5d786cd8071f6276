"""Partial-k (VPT's baseline, Jia et al., ECCV 2022): fine-tune the last k blocks of the backbone and every
layer after them; the embedding and the earlier blocks stay frozen.

VPT's Partial-1 trains the last encoder layer and the final norm (KMnP/vpt src/models/vit_models.py:
`transformer.encoder.layer.{L-1}` and `encoder_norm`): 7,087,872 + 1,536 = 7,089,408 parameters on
ViT-B/16. "After them" also covers a stage's downsampling layer when the trained blocks reach into a later
stage (Swin, ConvNeXt) and a norm between pooling and the classifier (ViT fc_norm, ConvNeXt head.norm).
Everything before block `first_trainable_block` is frozen, so its output can be cached per image.

Weight decay: VPT's AdamW rule (KMnP/vpt src/solver/optimizer.py): every tensor but the biases decays,
the tuned blocks' norm weights included (timm's rule exempts them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import nn

from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.method import ANY_FAMILY, Method, refuse_above, unfreeze
from petlbench.options import Range
from petlbench.recipes import VPT_FINETUNE, VPT_FINETUNE_GRID, VPT_FINETUNE_SOURCE


@dataclass
class PartialConfig:
    blocks: Annotated[int, Range(min=1)] = 1  # how many of the last blocks train (VPT's Partial-1)


class Partial(Method):
    name = "partial"
    description = "fine-tune the last k blocks and the final norm"
    paper = "Partial-k baseline of VPT (Jia et al., ECCV 2022)"
    Config = PartialConfig
    families = ANY_FAMILY
    recipe = "vpt"  # VPT's Partial-1 numbers; it tunes backbone weights like Full: AdamW, fine-tuning grid
    decay_rule = "vpt"  # see the module docstring
    train_defaults = {**VPT_FINETUNE, "lr": 0.0005}
    tune_grid = VPT_FINETUNE_GRID
    defaults_source = (VPT_FINETUNE_SOURCE + "; base lr 5e-4 from that grid, as full fine-tuning (VPT published no "
                       "per-task values for Partial-k)")

    def check_fit(self, model):
        refuse_above(self, "option 'blocks'", self.config.blocks, anatomy(model, self.name).depth,
                     "the number of blocks the backbone has")

    def apply(self, model):
        body = anatomy(model, self.name)
        first = self.first_trainable_block(model)
        for block in body.blocks[first:]:
            unfreeze(block.module)
        first_stage = body.blocks[first].stage
        for stage, downsample in body.downsamples.items():
            if stage > first_stage:  # between two trained blocks: what the later one reads
                unfreeze(downsample)
        for norm in (body.final_norm, body.head_norm):
            if norm is not None:
                unfreeze(norm)
        return model

    def first_trainable_block(self, model: nn.Module) -> int:
        """Depth index of the first block that trains; nothing before it does (features there can be cached)."""
        depth = anatomy(model, self.name).depth
        if self.config.blocks > depth:
            raise UserError(f"{self.name}: blocks={self.config.blocks}, but the backbone has only {depth} blocks")
        return depth - self.config.blocks

    def merge(self, model):
        return model  # the tuned blocks are the backbone's own parameters
