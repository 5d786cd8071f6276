"""VPT-deep (Jia et al., ECCV 2022): every block gets its own learned prompt tokens.

Each block is wrapped as insert(prompts_i) -> block -> strip, so layer i's prompt outputs are
replaced by layer i+1's prompts: depth x tokens x embed_dim parameters (12 x 100 x 768 = 921,600).

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
class VPTDeepConfig(PromptConfig):
    # 100: the VPT-deep length released most often, 12 of 38 per-task choices (Adapter+'s VPT-deep tokens 7 of 19,
    # PETL_Vision's val-selected vpt_num 5 of 19); each source alone: Adapter+ 100 (7 of 19), PETL_Vision 50 (7 of 19)
    tokens: Annotated[int, Range(min=1, max=MAX_TOKENS)] = 100


class VPTDeep(Method):
    name = "vpt_deep"
    description = "prompt tokens replaced at the input of every block"
    Config = VPTDeepConfig
    paper = "VPT (Jia et al., ECCV 2022)"
    families = ("vit",)  # prompts are tokens of a ViT's sequence
    recipe = "vpt"
    decay_rule = "vpt"  # see the module docstring
    train_defaults = VPT_TRAIN
    defaults_source = (VPT_TRAIN_SOURCE + "; tokens 100: 12 of 38 released per-task VPT-deep lengths (visinf/adapter_plus "
                       "conf/experiment/vtab/vpt.yaml 7 of 19, PETL_Vision's val-selected vpt_num 5 of 19); prompt "
                       "dropout 0.1: PETL_Vision's fixed vpt_dropout (no source tuned it; VPT's code defaults to 0)")

    def apply(self, model):
        cfg = self.config
        vit = anatomy(model, self.name)
        where = vit.num_prefix_tokens
        for block in vit.blocks:
            prompts = make_prompts(cfg.tokens, vit.embed_dim, cfg.init, vit.patch_size)
            block.replace(nn.Sequential(
                InsertPrompts(prompts, where, cfg.dropout), block.module, StripPrompts(cfg.tokens, where)))
        return model
