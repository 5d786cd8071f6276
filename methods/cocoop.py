"""CoCoOp, conditional context optimisation (Zhou et al., CVPR 2022, "Conditional Prompt Learning for
Vision-Language Models").

CoOp's learned context plus a meta-net, Linear(E, E/16) -> ReLU -> Linear(E/16, width), that maps each image's
unit CLIP feature (E = CLIP's embedding size) to one bias added to every context vector: each image gets its own
prompts, so the text features are per image, (B, C, E), and logits[b, c] = logit scale x cos(image b, text b, c).
Defaults are the paper's base-to-new setting (KaiyangZhou/CoOp, configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1
.yaml, scripts/cocoop/base2new_train.sh): 4 context vectors from "a photo of a", the name at the end, SGD lr 0.002,
batch 1, 10 epochs. Trainable: n_ctx x width + the meta-net (4 x 512 + 512 x 32 + 32 + 32 x 512 + 512 = 35,360
on ViT-B/16). The official forward runs the text tower once per image; here up to PROMPTS_PER_PASS prompts
(several images' C prompts) go through it at once, the same result up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from petlbench.options import Range
from petlbench.recipes import COOP_SOURCE
from petlbench.textprompts import PromptHead, PromptMethod, initial_context

PROMPTS_PER_PASS = 1024  # prompts per text-tower call: a bound on memory, not a setting (results do not change)
META_REDUCTION = 16  # the meta-net's hidden width is E // 16 (vis_dim // 16 in the official PromptLearner)


@dataclass
class CoCoOpConfig:
    n_ctx: Annotated[int, Range(min=1)] = 4  # context vectors
    init: str = "a photo of a"  # "": random N(0, 0.02); else a phrase of n_ctx tokens that starts the context


class CoCoOpHead(PromptHead):
    """Per image: context + meta-net(image feature) -> the C prompts -> text features -> cosine with the image."""

    def __init__(self, text, ctx: torch.Tensor):
        super().__init__(text, ctx.shape[-2], "end", "cocoop")
        dim, width = text.projection.shape[1], ctx.shape[-1]
        self.ctx = nn.Parameter(ctx)  # (n_ctx, width)
        self.meta_net = nn.Sequential(nn.Linear(dim, dim // META_REDUCTION), nn.ReLU(),
                                      nn.Linear(dim // META_REDUCTION, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = self.image_features(x)  # (B, E), unit
        ctx = self.ctx + self.meta_net(image)[:, None, :]  # (B, n_ctx, width): one context per image
        per_pass = max(1, PROMPTS_PER_PASS // self.num_classes)
        logits = [torch.einsum("be,bce->bc", im, self.text_features(c[:, None]))
                  for im, c in zip(image.split(per_pass), ctx.split(per_pass))]
        return self.logit_scale * torch.cat(logits)

    def with_text(self, text) -> "CoCoOpHead":
        head = CoCoOpHead(text, self.ctx.detach())
        head.meta_net = self.meta_net  # the same meta-net, as CoCoOp tests new classes
        return head


class CoCoOp(PromptMethod):
    name = "cocoop"
    description = "CoCoOp: CoOp's context plus an image-conditioned bias from a meta-net (4 vectors, 'a photo of a')"
    paper = "Zhou et al., CVPR 2022 (CoCoOp)"
    Config = CoCoOpConfig
    train_defaults = {"batch_size": 1, "epochs": 10}
    defaults_source = ("batch 1, 10 epochs, lr 0.002, 1 warm-up epoch: KaiyangZhou/CoOp configs/trainers/"
                       "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml (base-to-new, 16 shots); the rest as CoOp: "
                       + COOP_SOURCE)

    def apply(self, model: nn.Module) -> nn.Module:
        model.head = CoCoOpHead(model.clip, initial_context(model.clip, self.config.n_ctx, self.phrase()))
        return model
