"""VPT-deep (Jia et al., ECCV 2022): every block gets its own learned prompt tokens.

Each block is wrapped as insert(prompts_i) -> block -> strip, so layer i's prompt outputs are
replaced by layer i+1's prompts: depth x tokens x embed_dim parameters (12 x 50 x 768 = 460,800).
"""
from torch import nn

from petlbench.method import Method
from petlbench.prompts import InsertPrompts, PromptConfig, StripPrompts, make_prompts
from petlbench.backbones import anatomy


class VPTDeep(Method):
    name = "vpt_deep"
    description = "prompt tokens replaced at the input of every block"
    Config = PromptConfig
    paper = "VPT (Jia et al., ECCV 2022)"
    families = ("vit",)  # prompts are tokens of a ViT's sequence
    recipe = "vpt"

    def apply(self, model):
        cfg = self.config
        vit = anatomy(model, self.name)
        where = vit.num_prefix_tokens
        for block in vit.blocks:
            prompts = make_prompts(cfg.tokens, vit.embed_dim, cfg.init, vit.patch_size)
            block.replace(nn.Sequential(
                InsertPrompts(prompts, where, cfg.dropout), block.module, StripPrompts(cfg.tokens, where)))
        return model
