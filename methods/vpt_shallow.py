"""VPT-shallow (Jia et al., ECCV 2022): learned prompt tokens enter the first block only.

The prompts are inserted after the class token, travel through every block, and are stripped
after the last one: tokens x embed_dim parameters (200 x 768 = 153,600 on ViT-B/16).

Weight decay: VPT's rule (KMnP/vpt src/solver/optimizer.py, SGD: every trained tensor, the prompts
included, but the head's bias).
"""
from dataclasses import dataclass
from typing import Annotated

from torch import nn

from petlbench.method import Method
from petlbench.options import Range
from petlbench.prompts import MAX_TOKENS, VPT_TRAIN, VPT_TRAIN_SOURCE, InsertPrompts, PromptConfig, StripPrompts, make_prompts
from petlbench.backbones import anatomy


@dataclass
class VPTShallowConfig(PromptConfig):
    # 200: PETL_Vision's val-selected vpt_num for VPT-shallow on 7 of 19 tasks (the only released per-task lengths)
    tokens: Annotated[int, Range(min=1, max=MAX_TOKENS)] = 200
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.0  # VPT-shallow: no prompt dropout


class VPTShallow(Method):
    name = "vpt_shallow"
    description = "prompt tokens inserted before the first block"
    Config = VPTShallowConfig
    paper = "VPT (Jia et al., ECCV 2022)"
    families = ("vit",)  # prompts are tokens of a ViT's sequence
    recipe = "vpt"
    decay_rule = "vpt"  # see the module docstring
    train_defaults = VPT_TRAIN
    defaults_source = (VPT_TRAIN_SOURCE + "; tokens 200: PETL_Vision's val-selected vpt_num on 7 of 19 tasks "
                       "(tune_output/default_vtab/processed_vtab/*/vpt_shallow)")

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
