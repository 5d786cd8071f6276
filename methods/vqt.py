"""Visual Query Tuning (Tu et al., CVPR 2023): learned query tokens summarise every layer for the head.

Each block gets `tokens` learned queries that attend to the block's own (frozen) keys and values and go
through its MLP, as in andytu28/VQT (src/models/vit_backbones/h2t_vit.py): the patch and class tokens
never see the queries, so the backbone's own forward is untouched (bit-identical features), and no
gradient flows through the backbone's token path (VQT's memory saving). The head reads
[pooled feature; every layer's query outputs], each part L2-normalised, through one linear layer:
(1 + depth * tokens) * dim inputs. Trainable outside the head: depth * tokens * dim (12 x 1 x 768 = 9,216).

The head starts as VQT's (src/models/mlp.py MLP with MLP_NUM 0 and special_bias, build_h2t_model.py): weights
Kaiming-normal with fan-out (std sqrt(2 / classes)), every bias -log((1 - 0.01) / 0.01) = -log 99, a
focal-loss prior of 0.01 whatever the number of classes (equal to -log(C - 1) only at C = 100). A bias equal
across classes leaves the softmax unchanged, but not Adam's per-element steps with L2 decay. Under one seed
the head's tensors equal the released MLP head's (max abs diff 0).

Weight decay: VPT's rule, as VQT's code is VPT's (Adam branch of src/solver/optimizer.py: L2 decay on every
trained tensor but the head's bias).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import Block, anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import Range
from petlbench.prompts import MAX_TOKENS, make_prompts
from petlbench.recipes import WEIGHT_DECAYS

SOURCE = ("VQT's VTAB-1k scripts (andytu28/VQT): 1 query per layer on 12 of 19 tasks (run_demo_exp.sh; README: "
          "'can be simply set to 1'), query dropout 0.1 (scripts/VQT/run_vqt_vtab.sh), L2-normalised "
          "concatenated features (src/configs/config.py NORMALIZE_FEATS), Adam, batch 128, 100 epochs, 10 warm-up, "
          "base lr 0.1 x batch/256 and wd 1e-4 (configs/h2t-prompt/vtab.yaml), grid lr {1, 0.5, 0.25, 0.1, 0.05} x wd "
          "{0.01, 1e-3, 1e-4, 0} (head2toe_train.py)")


@dataclass
class VQTConfig:
    tokens: Annotated[int, Range(min=1, max=MAX_TOKENS)] = 1  # query tokens per layer
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1  # on the queries, before each layer
    pool: Literal["concat", "mean"] = "concat"  # how a layer's query outputs reach the head
    normalize: bool = True  # L2-normalise the pooled feature and each layer's query outputs


class QueryOutputs:
    """One slot per layer, written by that layer's wrapper and emptied by the head: state lives for one
    forward only, and a slot the forward did not fill is an error, never a stale tensor."""

    def __init__(self, depth: int):
        self.slots: list[torch.Tensor | None] = [None] * depth

    def take(self) -> list[torch.Tensor]:
        slots, self.slots = self.slots, [None] * len(self.slots)
        if any(s is None for s in slots):
            raise RuntimeError("vqt: the head ran without every block's query outputs (call the whole model)")
        return slots  # type: ignore[return-value]


class QueryBlock(nn.Module):
    """The frozen block as it was, plus its learned queries run through the block's own parts."""

    def __init__(self, block: Block, index: int, store: QueryOutputs, queries: nn.Parameter, dropout: float):
        super().__init__()
        self.block = block.module
        self.queries = queries
        self.dropout = nn.Dropout(dropout)
        self.parts = block  # a plain dataclass: its modules stay registered once, under `block`
        self.index, self.store = index, store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        self.store.slots[self.index] = self.query_outputs(x)
        return out

    def query_outputs(self, x: torch.Tensor) -> torch.Tensor:
        p = self.parts
        norm1, norm2 = p.norms
        scale1, scale2 = p.branch_scales or (nn.Identity(), nn.Identity())
        width = p.qkv.out_features // 3  # rows of the fused projection are [q; k; v]
        heads, b = p.heads, x.shape[0]
        weight, bias = p.qkv.weight, p.qkv.bias
        split = (lambda lo, hi: bias[lo:hi]) if bias is not None else (lambda lo, hi: None)
        queries = self.dropout(self.queries).expand(b, -1, -1).to(x.dtype)
        q = F.linear(norm1(queries), weight[:width], split(0, width))
        kv = F.linear(norm1(x), weight[width:], split(width, 3 * width))  # keys, values: the tokens only
        q = q.reshape(b, -1, heads, width // heads).transpose(1, 2)
        k, v = kv.reshape(b, -1, 2, heads, width // heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, width)
        h = queries + scale1(p.attn_proj(attended))
        return h + scale2(p.mlp(norm2(h)))


PRIOR = 0.01  # VQT's head bias: the prior probability of each class at init, as focal loss's (src/models/mlp.py)


class VQTHead(nn.Module):
    """Linear classifier on [pooled feature; each layer's query outputs], each part L2-normalised."""

    def __init__(self, store: QueryOutputs, pooled_dim: int, query_dim: int, tokens: int, num_classes: int,
                 pool: str, normalize: bool):
        super().__init__()
        self.store, self.pool, self.normalize = store, pool, normalize
        per_layer = query_dim * (tokens if pool == "concat" else 1)
        self.fc = nn.Linear(pooled_dim + len(store.slots) * per_layer, num_classes)
        nn.init.kaiming_normal_(self.fc.weight, a=0, mode="fan_out")  # VQT's MLP head (src/models/mlp.py)
        nn.init.constant_(self.fc.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        layers = [q.flatten(1) if self.pool == "concat" else q.mean(1) for q in self.store.take()]
        parts = [pooled, *layers]
        if self.normalize:
            parts = [F.normalize(t, dim=-1) for t in parts]
        return self.fc(torch.cat(parts, dim=-1))


class VQT(Method):
    name = "vqt"
    description = "learned query tokens per layer read the frozen features; the head sees all layers"
    paper = "Visual Query Tuning (Tu et al., CVPR 2023), andytu28/VQT"
    Config = VQTConfig
    families = ("vit",)  # queries attend inside a ViT's token attention
    recipe = "vpt"  # VQT's code is VPT's code: batch 128, lr x batch/256, 100 epochs, 10 warm-up, cosine
    decay_rule = "vpt"  # see the module docstring
    train_defaults = {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0001}  # Adam, L2 decay: VQT's code
    tune_grid = {"lr": [1.0, 0.5, 0.25, 0.1, 0.05], "weight_decay": WEIGHT_DECAYS}
    defaults_source = SOURCE

    def apply(self, model):
        cfg = self.config
        vit = anatomy(model, self.name)
        for block in vit.blocks:
            if block.heads is None or block.qkv is None or block.attn_proj is None or len(block.norms) != 2:
                raise UserError(f"{self.name}: needs pre-norm blocks with fused q,k,v attention "
                                f"({type(model).__name__} block {block.key} is not one)")
        head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise UserError(f"{self.name}: needs a linear classifier to widen (num_classes > 0)")
        store = QueryOutputs(vit.depth)
        for i, block in enumerate(vit.blocks):
            queries = make_prompts(cfg.tokens, block.dim, "xavier", vit.patch_size)  # VQT: VPT's uniform init
            block.replace(QueryBlock(block, i, store, queries, cfg.dropout))
        new_head = VQTHead(store, head.in_features, vit.blocks[-1].dim, cfg.tokens, head.out_features, cfg.pool,
                           cfg.normalize)
        replace_module(model, head, new_head)
        assert model.get_classifier() is new_head
        return model
