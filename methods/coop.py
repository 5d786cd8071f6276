"""CoOp, context optimisation (Zhou et al., IJCV 2022, "Learning to Prompt for Vision-Language Models").

The classifier is CLIP's text tower on prompts [SOS][ctx_1 .. ctx_n][class name][.][EOS] whose n context vectors
(the text tower's width each) are the only thing that trains: logits = CLIP's logit scale x cos(image feature,
text feature), the image feature CLIP's (pooled token -> CLIP's projection, frozen). Defaults are the paper's main
setting (KaiyangZhou/CoOp, scripts/coop/main.sh "end 16 ... False"): 16 vectors drawn from N(0, 0.02), one context
shared by every class, the class name at the end. `init="a photo of a"` with `n_ctx=4` starts from that phrase's
embeddings (configs/trainers/CoOp/*_ctxv1.yaml); `csc=true` learns one context per class (C x n x width);
`position` middle / front moves the name (CLASS_TOKEN_POSITION). Trainable: n_ctx x width (16 x 512 = 8,192 on
ViT-B/16), x C with csc. tests/test_method_coop.py holds the closed forms; a scratch comparison with the official
PromptLearner / TextEncoder on the same weights is in the README.

Departure: with both `csc` and `init` the official code ignores csc (one shared phrase context); here every class
starts from the phrase and learns its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from petlbench.errors import UserError
from petlbench.options import Range
from petlbench.textprompts import PromptHead, PromptMethod, initial_context


@dataclass
class CoOpConfig:
    n_ctx: Annotated[int, Range(min=1)] = 16  # context vectors (M in the paper)
    init: str = ""  # "": random N(0, 0.02); else a phrase whose token embeddings start the context (n_ctx tokens)
    position: Literal["end", "middle", "front"] = "end"  # where the class name sits
    csc: bool = False  # class-specific context: one set of vectors per class


class CoOpHead(PromptHead):
    """CLIP's classifier with learned context: text features of the prompts x image features."""

    def __init__(self, text, ctx: torch.Tensor, position: str):
        super().__init__(text, ctx.shape[-2], position, "coop")
        self.ctx = nn.Parameter(ctx)  # (n_ctx, width) or (C, n_ctx, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(x) @ self.text_features(self.ctx).T

    def with_text(self, text) -> "CoOpHead":
        if self.ctx.dim() == 3:
            raise UserError("coop:csc=true learns a context per trained class: it has none for classes it never saw")
        return CoOpHead(text, self.ctx.detach(), self.position)


class CoOp(PromptMethod):
    name = "coop"
    description = "CoOp: learned context vectors in CLIP's text prompt (16, shared by all classes, name at the end)"
    paper = "Zhou et al., IJCV 2022 (CoOp)"
    Config = CoOpConfig

    def apply(self, model: nn.Module) -> nn.Module:
        classes = len(model.clip.classnames) if self.config.csc else None
        ctx = initial_context(model.clip, self.config.n_ctx, self.phrase(), classes)
        model.head = CoOpHead(model.clip, ctx, self.config.position)
        return model
