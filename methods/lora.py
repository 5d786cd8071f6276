"""LoRA (Hu et al., 2021) through peft: W x + (alpha / r) B A x on the query and value projections of every block.

A (r x d) starts Kaiming-uniform and B (d x r) at zero, so the model starts unchanged. timm's fused qkv Linear is
split into q, k, v Linears (petlbench.qkv) so that q and v are adapted and k is not; `merge` folds B A into the
weights and fuses q, k, v back, a plain timm model. On ViT-B/16 at r = 8: 12 x 2 x 8 x (768 + 768) = 294,912,
the 0.29M of the VTAB-1k tables. NOAH's LoRA (whose numbers those tables show) is one rank-8 pair on the fused qkv
(A 768 x 8 shared by q, k, v; B 8 x 2304, so k is adapted too): the same count, unscaled, as alpha = r here.

Weight decay: timm's rule: NOAH, whose LoRA script gives the lr and wd, trains through timm's
create_optimizer (supernet_train_prompt.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import peft

from petlbench.method import Method, refuse_above
from petlbench.methods.peft import Target, inject, merge_adapters, target_widths
from petlbench.options import Range


@dataclass
class LoRAConfig:
    rank: Annotated[int, Range(min=1)] = 8
    alpha: Annotated[float, Range(gt=0)] = 8.0  # the update is scaled by alpha / rank
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.0  # on LoRA's input
    targets: list[Target] = field(default_factory=lambda: ["q", "v"])


class LoRA(Method):
    name = "lora"
    description = "low-rank weight updates B A (B starts at zero) on q and v of every block, through peft (merges)"
    paper = "LoRA (Hu et al., ICLR 2022); VTAB-1k numbers and recipe from NOAH (Zhang et al., 2022)"
    Config = LoRAConfig
    families = ("vit", "swin")  # blocks with a fused qkv Linear (attn.qkv)
    recipe = "noah"  # NOAH's LoRA script: AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, drop-path 0.1
    decay_rule = "timm"  # see the module docstring
    defaults_source = ("rank 8 on q and v: LoRA section 7.1 and NOAH's VTAB-1k LoRA (experiments/LoRA/"
                       "ViT-B_prompt_lora_8.yaml, LORA_DIM 8); alpha 8 = rank (scale 1): LoRA section 4.1 ('we set "
                       "alpha to the first r we try'), and NOAH adds B A unscaled (model/module/qkv_super_prompt.py); "
                       "no dropout, as NOAH; lr 1e-3, wd 1e-4: NOAH configs/LoRA/VTAB/slurm_train_lora_vtab.sh")

    def check_fit(self, model):
        widths = target_widths(model, self.config.targets, self.name)
        if widths:
            refuse_above(self, "option 'rank'", self.config.rank, widths[0],
                         "the width of the narrowest Linear it adapts")

    def apply(self, model):
        cfg = self.config
        kwargs = {"r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "bias": "none"}
        return inject(model, peft.LoraConfig, kwargs, cfg.targets, self.name)

    def merge(self, model):
        return merge_adapters(model, self.name)
