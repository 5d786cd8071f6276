"""VPT-shallow (Jia et al., ECCV 2022): learned prompt tokens enter the first block only.

The prompts are inserted after the class token, travel through every block, and are stripped
after the last one: tokens x embed_dim parameters (50 x 768 = 38,400 on ViT-B/16).
"""
from dataclasses import dataclass
from typing import Annotated

from torch import nn

from petlbench.method import Method
from petlbench.options import Range
from petlbench.prompts import InsertPrompts, PromptConfig, StripPrompts, make_prompts
from petlbench.backbones import anatomy


@dataclass
class VPTShallowConfig(PromptConfig):
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.0  # VPT-shallow: no prompt dropout


class VPTShallow(Method):
    name = "vpt_shallow"
    description = "prompt tokens inserted before the first block"
    Config = VPTShallowConfig
    paper = "VPT (Jia et al., ECCV 2022)"
    families = ("vit",)  # prompts are tokens of a ViT's sequence
    recipe = "vpt"

    def apply(self, model):
        cfg = self.config
        vit = anatomy(model, self.name)
        prompts = make_prompts(cfg.tokens, vit.embed_dim, cfg.init, vit.patch_size)
        where = vit.num_prefix_tokens
        first, last = vit.blocks[0], vit.blocks[-1]
        first.replace(nn.Sequential(InsertPrompts(prompts, where, cfg.dropout), first.module))
        current = getattr(last.container, last.key)  # the wrapper above when the model has one block
        last.replace(nn.Sequential(current, StripPrompts(cfg.tokens, where)))
        return model
