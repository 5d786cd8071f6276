"""KAdaptation (He et al., AAAI 2023) as close as peft's LoKr (Yeh et al., 2023) comes: Kronecker-product updates of
the query and value projections of every block, plus a trained bias.

The paper: dW = sum_{i=1..n} A_i (x) B_i with n = 32; the "slow" A_i (n x n) are shared by all layers, the "fast"
B_i = u_i v_i^T (d/n x d/n, rank 1) belong to each layer (eric-ai-lab/PEViT vision_benchmark/evaluation/model.py:
phm_dim 32, phm_rank 1, one set of A_i for q and one for v, dropout 0.5 on the Kronecker weight, scale 160, and a
bias b of width d per layer added to both q and v). Here, on each adapted Linear: dW = (alpha / r) A (x) (u v^T) with
peft's LoKr, decompose_factor n = 32 (A is 32 x 32, u v^T 24 x 24 on ViT-B), rank r = 1. Where it differs:
- one Kronecker product per Linear, not a sum of n = 32;
- A is the Linear's own, full rank, not shared across layers (peft's inject_adapter_in_model keeps no state shared
  between layers); the paper's A_i are rank-1 (two n-vectors each) and shared;
- the dropout (0.5) is LoKr's rank dropout: whole output rows of dW, rescaled, not single entries of dW;
- scale 1 (alpha = r): LoKr starts A at zero and u, v Kaiming-uniform; the paper's scale 160 sits on A_i near 1e-4
  (products of two U(-0.01, 0.01) vectors). (As released, PEViT zeroes both u and v, so no gradient reaches the
  Kronecker terms at all and only b trains; we follow LoKr's zero-start instead.)
- the bias: q's and v's own biases train (2 x 768 per block), not one b added to both (768).
Trainable on ViT-B/16: 12 x 2 x (32*32 + 2*24 + 768) = 44,160; the paper's code 50,176 (12 x (2 x 32 x 48 + 768) +
2 x 2 x 32 x 32; its README's 79,699 less linear probing's 29,523 head). `merge` folds dW into the Linears.

Weight decay: timm's rule, that of the NOAH recipe its lr and wd come from (the paper has no VTAB-1k
recipe).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import peft

from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.methods.peft import Target, inject, merge_adapters, refuse_unfit_factor, target_widths
from petlbench.options import Range


@dataclass
class KAdaptationConfig:
    factor: Annotated[int, Range(min=1)] = 32  # n: A is n x n, u v^T (width / n) x (width / n)
    rank: Annotated[int, Range(min=1)] = 1  # rank of the fast weight u v^T
    alpha: Annotated[float, Range(gt=0)] = 1.0  # dW is scaled by alpha / rank
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.5  # rows of dW dropped in training (rescaled)
    bias: bool = True  # train the adapted Linears' biases (the paper's b)
    targets: list[Target] = field(default_factory=lambda: ["q", "v"])


class KAdaptation(Method):
    name = "kadaptation"
    description = "Kronecker-product updates A (x) u v^T on q and v, and their biases, through peft's LoKr (merges)"
    paper = "KAdaptation (He et al., AAAI 2023, 'Parameter-efficient model adaptation for vision transformers')"
    Config = KAdaptationConfig
    families = ("vit", "swin")  # blocks with a fused qkv Linear (attn.qkv)
    recipe = "noah"  # the paper reports ELEVATER (CLIP, per-dataset lr/wd search), not VTAB-1k
    decay_rule = "timm"  # see the module docstring
    defaults_source = ("n = 32, fast-weight rank 1, q and v, dropout 0.5 on the Kronecker weight, a trained bias: "
                       "eric-ai-lab/PEViT vision_benchmark/evaluation/model.py (phm_dim 32, phm_rank 1, kdropout 0.5, "
                       "b); scale 1 (alpha = rank), not the code's 160, which offsets its 1e-4-sized slow weights; "
                       "lr 1e-3, wd 1e-4: NOAH's recipe (the paper has no VTAB-1k recipe)")

    def check_fit(self, model):
        """The factor must divide every adapted width (else LoKr trains another one); the rank is at most a width."""
        widths = target_widths(model, self.config.targets, self.name)
        if widths:
            refuse_unfit_factor(self, "option 'factor'", self.config.factor, widths)
            refuse_above(self, "option 'rank'", self.config.rank, widths[0],
                         "the width of the narrowest Linear it adapts")

    def apply(self, model):
        cfg = self.config
        kwargs = {"r": cfg.rank, "alpha": cfg.alpha, "decompose_factor": cfg.factor, "decompose_both": False,
                  "rank_dropout": cfg.dropout, "rank_dropout_scale": True}
        model = inject(model, peft.LoKrConfig, kwargs, cfg.targets, self.name)
        if cfg.bias:
            for adapted in [m for m in model.modules() if isinstance(m, peft.tuners.lokr.LoKrLayer)]:
                bias = adapted.get_base_layer().bias
                if bias is None:
                    raise UserError(f"{self.name}: bias=true needs biases on the adapted Linears; this model's have "
                                    "none (use bias=false)")
                bias.requires_grad_(True)
        return model

    def merge(self, model):
        return merge_adapters(model, self.name)
