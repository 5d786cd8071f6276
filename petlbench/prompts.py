"""Visual prompt tokens for timm ViTs (VPT, Jia et al., ECCV 2022), as modules that wrap blocks.

Prompts enter after the position embedding, right after the prefix (class/register) tokens, so they
carry no position embedding; `model.num_prefix_tokens` is never changed (timm's `_pos_embed` and
pooling read it), and prompts are stripped again before the final norm and pooling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from petlbench.options import Range


# Prompts add no parameters to speak of, but every block attends over them: VPT's largest is 200 (ViT-B, 196
# patches); thousands of tokens only fill the memory. vqt's queries per layer share the bound.
MAX_TOKENS = 1000

# VPT's untuned defaults, from the per-task settings released for VPT on VTAB-1k (the value most often chosen).
# SGD lr: E2VPT's VPT configs (ChengHan111/E2VPT configs/prompt/prompt_vpt/*/*.yaml on base-prompt.yaml: VPT's
# code, SGD, batch 128) give SOLVER.BASE_LR 0.01, WEIGHT_DECAY 1e-3 on 18 of 19 tasks (cifar100: 2.5, 1e-2). VPT's
# train.py hands SOLVER.BASE_LR to the optimizer as it is (only tune_vtab.py scales its grid by batch / 256), so
# 0.01 is the optimizer's lr at batch 128: petlbench's base lr (x batch / 256) is 0.02.
VPT_TRAIN = {"lr": 0.02, "weight_decay": 0.001}
VPT_TRAIN_SOURCE = ("base lr 0.02 (x batch / 256: the optimizer's 0.01 at batch 128) and wd 1e-3: SOLVER.BASE_LR 0.01 "
                    "and WEIGHT_DECAY 1e-3 on 18 of 19 tasks in E2VPT's released VPT configs (ChengHan111/E2VPT "
                    "configs/prompt/prompt_vpt, VPT's code: SGD, batch 128, BASE_LR unscaled by train.py); "
                    "PETL_Vision's val-selected VPT values (AdamW, not comparable in lr) agree on wd 1e-3 "
                    "(deep 11 of 19, shallow 13 of 19)")


@dataclass
class PromptConfig:
    """Options of both VPT variants."""
    tokens: Annotated[int, Range(min=1, max=MAX_TOKENS)] = 50
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1  # VPT's prompt dropout (deep)
    init: Literal["xavier", "normal", "zeros"] = "xavier"  # xavier: VPT's uniform init


def make_prompts(count: int, dim: int, init: str, patch_size: tuple[int, int]) -> nn.Parameter:
    prompts = torch.empty(1, count, dim)
    if init == "xavier":  # VPT's choice: uniform with the fan of a patch projection
        bound = math.sqrt(6.0 / float(3 * patch_size[0] * patch_size[1] + dim))
        nn.init.uniform_(prompts, -bound, bound)
    elif init == "normal":
        nn.init.trunc_normal_(prompts, std=0.02)
    elif init == "zeros":
        nn.init.zeros_(prompts)
    else:
        raise ValueError(f"unknown prompt init {init!r}")
    return nn.Parameter(prompts)


class InsertPrompts(nn.Module):
    """Insert learned prompt tokens into the token sequence at `position` (after the prefix tokens)."""

    def __init__(self, prompts: nn.Parameter, position: int, dropout: float = 0.0):
        super().__init__()
        self.prompts = prompts
        self.position = position
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout(self.prompts).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x[:, : self.position], p, x[:, self.position:]], dim=1)

    def extra_repr(self) -> str:
        return f"tokens={self.prompts.shape[1]}, position={self.position}"


class StripPrompts(nn.Module):
    """Drop the `count` prompt outputs that sit at `position`, so later code sees the original tokens."""

    def __init__(self, count: int, position: int):
        super().__init__()
        self.count = count
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, : self.position], x[:, self.position + self.count:]], dim=1)

    def extra_repr(self) -> str:
        return f"tokens={self.count}, position={self.position}"
