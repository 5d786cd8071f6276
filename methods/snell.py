"""SNELL (Shen et al., NeurIPS 2024, "Expanding Sparse Tuning for Low Memory Usage"): sparse tuning whose sparse
update is merged from two low-rank matrices through a nonlinear kernel, so the optimizer holds only the low-rank
matrices (LoRA-level memory) while the update itself is a high-rank, sparse matrix.

For a frozen Linear W (out x in) the update is dW = S(K)^T with K (in x out) the kernelised merge

    K[i, j] = c * sum_h (-1)^h ||A_h[i] - B_h[j]||_2,   h = 0 .. H-1 (H = 2 kernels, c = 0.1)

of A (H x in x r/H) and B (H x out x r/H), both Kaiming-uniform (a = sqrt 5): a difference of Euclidean-distance
kernels, high-rank although A and B are rank r/H. It does not start at zero (nor does the released code). S is the
competition-based sparsification at sparsity s (the fraction of dW's entries zeroed, per matrix): with m = |K|
(detached), the floor(s (N - 1)) + 1 smallest magnitudes of the N entries are zeroed (torch.quantile's linear rule
for the s-quantile, as the released code thresholds) and each survivor becomes K * m, so an entry's gradient
scales with its own magnitude: large entries win the competition. At s = 0 the released code uses the kernel
alone (KLoRA, no K * m), and so does this module.

As ssfgunner/SNELL @e9d5185 model/vision_transformer_timm.py (SNELL, KLoRA, TuningModule, AttentionSNELLParallel,
MlpSNELLParallel): every block's q, k, v (each its own update and sparsity, on timm's fused qkv as three parts),
attention proj, fc1 and fc2 get y = W x + b + drop_path(dW x'), x' = dropout(x) with dropout 0.1 on the input of
q, k, v, fc1, fc2 (one draw shared by q, k, v) but not proj, drop-path 0.1 per update; the class token trains
too (freeze_stages' ft_cls_token). ConvNeXt (model/convnext_timm.py): fc1 and fc2 only (Linears, or timm's 1x1
convs of conv_mlp). The dense update is recomputed in backward rather than stored (the released
torch.utils.checkpoint; option `recompute`): the paper's memory claim. dW is a dense delta, so `merge` adds it
to W (eval mode: no dropout, no drop-path).

Parameters: r (in + out) per adapted matrix, as LoRA at rank r. ViT-B/16: 12 x (4 x 1536 + 2 x 3840) r = 165,888 r
(r 32: 5,308,416; + 768 for the class token). The paper reports no count (its App. E.1); the released
freeze_stages prints this sum.

Weight decay: timm's rule (lib/utils.py build_optimizer: no decay on 1-d tensors, biases, cls_token, pos_embed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from timm.layers import DropPath
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import Range

KERNELS = 2  # H: the released num_Hs, never changed by its scripts
KERNEL_SCALE = 0.1  # c: the released SCALE_FACTOR_fc
SOURCE = ("ssfgunner/SNELL @e9d5185 scripts/vtab/snell32/*.sh (19 ViT-B/16 VTAB-1k tasks): rank 32 (19 of 19), "
          "sparsity 0 (5 of 19; 14 of 19 sparsify: 0.5 on 3, 0.9 on 2, median 0.4), lr 1e-3 (18 of 19), wd 0.01 "
          "(12 of 19), batch 16 (9 of 19), 100 epochs (11 of 19; 200 on 8); dropout 0.1 and drop-path 0.1 on the "
          "updates, class token trained, AdamW, 10 warm-up, drop-path 0.1: train.py and "
          "model/vision_transformer_timm.py")


@dataclass
class SNELLConfig:
    rank: Annotated[int, Range(min=2)] = 32  # r (low_rank_dim): A and B have r / 2 columns per kernel
    sparsity: Annotated[float, Range(min=0.0, lt=1.0)] = 0.0  # s (init_thres): fraction of each update zeroed
    dropout: Annotated[float, Range(min=0.0, lt=1.0)] = 0.1  # on the updates' input (q, k, v, fc1, fc2)
    drop_path: Annotated[float, Range(min=0.0, lt=1.0)] = 0.1  # per update, per sample
    cls_token: bool = True  # the class token trains (the released freeze_stages)
    recompute: bool = True  # recompute the dense update in backward instead of storing it (the released checkpoint)


def kernel_merge(a: torch.Tensor, b: torch.Tensor, scale: float = KERNEL_SCALE) -> torch.Tensor:
    """K (in x out) = scale * sum_h (-1)^h cdist(A_h, B_h): SNELL's kernelised merge of A (H, in, k), B (H, out, k)."""
    signs = scale * torch.tensor([(-1.0) ** h for h in range(a.shape[0])], dtype=a.dtype, device=a.device)
    return torch.sum(signs[:, None, None] * torch.cdist(a, b, p=2), dim=0)


def compete(k: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Competition-based sparsification: zero the floor(s (N - 1)) + 1 smallest magnitudes, survivors K * |K|."""
    if sparsity == 0:
        return k
    magnitude = k.detach().abs()
    zeroed = math.floor(sparsity * (magnitude.numel() - 1)) + 1
    threshold = magnitude.flatten().kthvalue(zeroed).values
    return k * torch.where(magnitude > threshold, magnitude, torch.zeros_like(magnitude))


class KernelUpdate(nn.Module):
    """One matrix's sparse update dW (out x in) from A (H, in, r/H) and B (H, out, r/H)."""

    def __init__(self, in_features: int, out_features: int, rank: int, sparsity: float):
        super().__init__()
        self.sparsity = sparsity
        self.a = nn.Parameter(torch.empty(KERNELS, in_features, rank // KERNELS))  # the released In_Qs
        self.b = nn.Parameter(torch.empty(KERNELS, out_features, rank // KERNELS))  # the released Out_Qs
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.b, a=math.sqrt(5))

    def weight(self) -> torch.Tensor:
        return compete(kernel_merge(self.a, self.b), self.sparsity).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight())


class SparselyTuned(nn.Module):
    """A frozen Linear (or 1x1 conv, channels first) plus SNELL's updates: base(x) + [drop_path(dW_p dropout(x))]_p,
    parts p of its output channels (q, k, v of a fused qkv; else one)."""

    def __init__(self, base: nn.Linear | nn.Conv2d, parts: int, cfg: SNELLConfig, dropout: float):
        super().__init__()
        self.base, self.recompute = base, cfg.recompute
        self.channels = 1 if isinstance(base, nn.Conv2d) else -1  # a ConvNeXt MLP of 1x1 convs: (B, C, H, W)
        width = base.weight.shape[0] // parts
        self.updates = nn.ModuleList(KernelUpdate(base.weight.shape[1], width, cfg.rank, cfg.sparsity)
                                     for _ in range(parts))
        self.drop_paths = nn.ModuleList(DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()
                                        for _ in range(parts))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _update(self, update: KernelUpdate, x: torch.Tensor) -> torch.Tensor:
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(update, x, use_reentrant=False)
        return update(x)

    def forward(self, x):
        dropped = self.dropout(x).movedim(self.channels, -1)
        deltas = [drop(self._update(update, dropped)) for update, drop in zip(self.updates, self.drop_paths)]
        return self.base(x) + torch.cat(deltas, dim=-1).movedim(-1, self.channels)

    def delta_weight(self) -> torch.Tensor:
        """dW (out x in) of every part, stacked."""
        return torch.cat([update.weight() for update in self.updates], dim=0)

    @torch.no_grad()
    def fold(self) -> nn.Module:
        weight = self.base.weight
        weight.add_(self.delta_weight().to(weight.dtype).reshape(weight.shape))
        return self.base


class SNELL(Method):
    name = "snell"
    description = ("sparse tuning with kernelised low-rank updates on q, k, v, proj, fc1, fc2 and competition-based "
                   "sparsification (merges)")
    paper = "SNELL (Shen et al., NeurIPS 2024, arXiv 2411.01800)"
    Config = SNELLConfig
    families = ("vit", "swin", "convnext")  # ConvNeXt: its MLP's fc1 and fc2, as the released convnext_timm.py
    recipe = "noah"  # SNELL's train.py: AdamW lr 1e-3, cosine, 10 warm-up, drop-path 0.1, 100 epochs
    train_defaults = {"weight_decay": 0.01, "batch_size": 16}
    decay_rule = "timm"  # see the module docstring
    defaults_source = SOURCE

    def check_fit(self, model):
        if self.config.rank % KERNELS:
            raise UserError(f"method {self.name}: option 'rank' is {self.config.rank}, expected an even number "
                            f"(split between SNELL's {KERNELS} kernels)")
        for i, layer, _, _ in self._targets(model):
            if layer is None:
                raise UserError(f"method {self.name}: block {i} lacks a Linear SNELL adapts (the fused qkv, "
                                "attention proj, MLP fc1 or fc2; ConvNeXt: an MLP of Linears or 1x1 convs)")

    def _targets(self, model):
        """(block index, Linear, parts, input dropout) of every adapted matrix, blocks in depth order."""
        body = anatomy(model, self.name)
        drop = self.config.dropout
        out = []
        for i, block in enumerate(body.blocks):
            if body.family != "convnext":
                out += [(i, block.qkv, 3, drop), (i, block.attn_proj, 1, 0.0)]
            fc1 = block.fc1 if block.fc1 is not None else _pointwise(block.mlp, "fc1")
            fc2 = block.fc2 if block.fc2 is not None else _pointwise(block.mlp, "fc2")
            out += [(i, fc1, 1, drop), (i, fc2, 1, drop)]
        return out

    def apply(self, model):
        for _, layer, parts, dropout in self._targets(model):
            replace_module(model, layer, SparselyTuned(layer, parts, self.config, dropout))
        token = getattr(model, "cls_token", None)
        if self.config.cls_token and isinstance(token, nn.Parameter):
            token.requires_grad_(True)
        return model

    def merge(self, model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, SparselyTuned):
                    setattr(parent, name, child.fold())
        return model


def _pointwise(mlp: nn.Module | None, name: str) -> nn.Conv2d | None:
    """A ConvNeXt MLP layer held as a 1x1 conv (timm's conv_mlp: a Linear over channels), else None."""
    found = getattr(mlp, name, None)
    return found if isinstance(found, nn.Conv2d) and found.kernel_size == (1, 1) and found.groups == 1 else None
