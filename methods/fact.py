"""FacT (Jie & Deng, AAAI 2023): every weight increment of a ViT (q, k, v, attention proj, fc1, fc2 of every
block) is a slice of one tensor, factorised with factors shared by all blocks.

Shared: U (width -> r) and V (r -> width, zero-initialised, so the model starts unchanged). An increment is
s * V core U, computed on the layer's input; the MLP's m-times-wider side is m slices (m = 4 on ViT-B).
- `tt` (tensor train): each block owns its cores, r x r for q, k, v, proj and r x mr / mr x r for fc1, fc2:
  2dr + L(4 + 2m)r^2 parameters = 21,504 on ViT-B/16 at r = 8.
- `tk` (Tucker): the cores are core C (r x r x r) times the columns of P (r x L(4 + 2m)) that index
  (block, kind): 2dr + L(4 + 2m)r + r^3 = 86,528 at r = 32.
As JieShibo/PETL-ViT FacT/fact_tt.py and fact_tk.py: nn.Linear's init for U and the TT cores, Xavier for
C and P, dropout 0.1 on the rank-r activations. The increment is a weight delta, so `merge` folds it into the
frozen Linears (the fused qkv takes [dq; dk; dv]).

Weight decay: every trained tensor decayed, the head's bias included: FacT's code passes all of them to
one AdamW (JieShibo/PETL-ViT FacT/fact_tk.py, fact_tt.py: AdamW(trainable, weight_decay=wd)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
from torch import nn

from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range

# Most common per-task values in FacT's VTAB-1k configs (configs/tt, configs/tk; 19 tasks each).
DEFAULT_RANK = {"tt": 8, "tk": 32}  # TT: 8 and 16 tie (9 tasks each), 8 as PETL_Vision; TK: 32 on 13 tasks
DEFAULT_SCALE = {"tt": 1.0, "tk": 10.0}  # TT: 1 on 7 tasks; TK: 10 on 9 tasks
KINDS = ("qkv", "proj", "fc1", "fc2")


@dataclass
class FacTConfig:
    variant: Literal["tt", "tk"] = "tk"
    rank: Annotated[Optional[int], Range(min=1)] = None  # none: the variant's default (tt 8, tk 32)
    scale: Annotated[Optional[float], Range(gt=0)] = None  # s; none: the variant's default (tt 1, tk 10)
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1


class SharedFactors(nn.Module):
    """U and V for every adapted Linear; FacT-TK adds the core C and the (block, kind) factor P."""

    def __init__(self, width: int, rank: int, slices: int | None):
        super().__init__()
        self.u = nn.Linear(width, rank, bias=False)
        self.v = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.v.weight)
        if slices:
            self.core = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, rank, rank)))
            self.p = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, slices)))


class TensorTrainCores(nn.Module):
    """FacT-TT: this layer's own cores, maps between rank-r spaces."""

    def __init__(self, kind: str, rank: int, chunks: int):
        super().__init__()
        wide = chunks * rank
        shapes = {"qkv": [(rank, rank)] * 3, "proj": [(rank, rank)], "fc1": [(rank, wide)], "fc2": [(wide, rank)]}
        self.maps = nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in shapes[kind])

    def matrices(self) -> list[torch.Tensor]:
        return [m.weight.t() for m in self.maps]


class TuckerCores(nn.Module):
    """FacT-TK: this layer's cores are C x P[:, start:start + n], slices of the shared tensor; no parameters."""

    def __init__(self, factors: SharedFactors, kind: str, start: int, chunks: int):
        super().__init__()
        self.held = (factors,)  # held, not registered: the model owns the factors once (model.fact)
        self.kind, self.start, self.chunks = kind, start, chunks
        self.count = {"qkv": 3, "proj": 1}.get(kind, chunks)

    def matrices(self) -> list[torch.Tensor]:
        factors = self.held[0]
        cores = factors.core @ factors.p[:, self.start:self.start + self.count]  # (r, r, count)
        if self.kind in ("qkv", "proj"):
            return list(cores.unbind(-1))
        flat = cores.reshape(cores.shape[0], -1)  # (r, chunks * r), FacT's reshape
        return [flat] if self.kind == "fc1" else [flat.t()]


class Factored(nn.Module):
    """A frozen Linear plus FacT's increment: base(x) + s * V(dropout(U(x) @ core)), per core."""

    def __init__(self, base: nn.Linear, kind: str, factors: SharedFactors, cores: nn.Module, scale: float,
                 chunks: int, dropout: float):
        super().__init__()
        self.base, self.kind, self.cores, self.scale, self.chunks = base, kind, cores, scale, chunks
        self.held = (factors,)  # held, not registered: the model owns the factors once (model.fact)
        self.drop = nn.Dropout(dropout)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        factors = self.held[0]
        if self.kind == "fc2":  # the wide input in chunks of the width, each through U
            u = factors.u(x.unflatten(-1, (self.chunks, -1))).flatten(-2)
        else:
            u = factors.u(x)
        parts = []
        for core in self.cores.matrices():
            h = self.drop(u @ core)
            if self.kind == "fc1":  # the wide output in chunks, each through V
                parts.append(factors.v(h.unflatten(-1, (self.chunks, -1))).flatten(-2))
            else:
                parts.append(factors.v(h))
        return self.scale * torch.cat(parts, dim=-1)

    def forward(self, x):
        return self.base(x) + self.delta(x)

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """The Linear with the increment added to its weight: W' = W + delta(I)^T (the delta is linear)."""
        self.eval()
        eye = torch.eye(self.base.in_features, device=self.base.weight.device, dtype=self.base.weight.dtype)
        self.base.weight.add_(self.delta(eye).t())
        return self.base


def _put(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return


class FacT(Method):
    name = "fact"
    description = "factor-tuning: q, k, v, proj, fc1, fc2 increments from factors shared across blocks (merges)"
    paper = "FacT (Jie & Deng, AAAI 2023)"
    Config = FacTConfig
    families = ("vit",)  # one width for every block: U and V are shared by all of them
    recipe = "noah"  # FacT's code: AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, drop-path 0.1
    decay_rule = "all"  # see the module docstring
    tune_grid = {"scale": [0.01, 0.1, 1.0, 10.0, 100.0]}  # the scales FacT's per-task configs choose from
    defaults_source = ("lr 1e-3, wd 1e-4, batch 64: JieShibo/PETL-ViT FacT/fact_tt.py, fact_tk.py; rank and scale "
                       "the most common in FacT/configs/{tt,tk}/*.yaml: tt r 8 (8 and 16 tie, 9 tasks each), s 1 "
                       "(7 of 19); tk r 32 (13 of 19), s 10 (9 of 19)")

    @property
    def rank(self) -> int:
        return self.config.rank or DEFAULT_RANK[self.config.variant]

    @property
    def scale(self) -> float:
        return self.config.scale if self.config.scale is not None else DEFAULT_SCALE[self.config.variant]

    def check_fit(self, model):
        refuse_above(self, "option 'rank'", self.rank, anatomy(model, self.name).embed_dim,
                     "the width of the factors U and V (the model's width)")

    def apply(self, model):
        vit = anatomy(model, self.name)
        width, rank, chunks = vit.embed_dim, self.rank, self._chunks(vit)
        per_block = 4 + 2 * chunks  # q, k, v, proj, then fc1 and fc2 in chunks of the width
        tucker = self.config.variant == "tk"
        factors = SharedFactors(width, rank, vit.depth * per_block if tucker else None)
        starts = dict(zip(KINDS, (0, 3, 4, 4 + chunks)))  # TK: each kind's first column of P within a block
        for i, block in enumerate(vit.blocks):
            layers = dict(zip(KINDS, (block.qkv, block.attn_proj, block.fc1, block.fc2)))
            for kind, layer in layers.items():
                cores = (TuckerCores(factors, kind, i * per_block + starts[kind], chunks) if tucker
                         else TensorTrainCores(kind, rank, chunks))
                _put(block.module, layer, Factored(layer, kind, factors, cores, self.scale, chunks,
                                                   self.config.dropout))
        model.fact = factors  # registered once, on the model: trained, counted and saved once
        return model

    def _chunks(self, vit) -> int:
        """m, the MLP's width in multiples of the model's (4 on ViT-B); refuses blocks FacT cannot factorise."""
        d = vit.embed_dim
        for i, b in enumerate(vit.blocks):
            layers = (b.qkv, b.attn_proj, b.fc1, b.fc2)
            if any(layer is None for layer in layers) or b.qkv.out_features != 3 * d or b.attn_proj.out_features != d \
                    or b.fc1.out_features % d or b.fc2.in_features != b.fc1.out_features or b.fc2.out_features != d:
                raise UserError(f"{self.name}: block {i} lacks the fused qkv, proj, fc1 and fc2 Linears of width {d} "
                                f"(and an MLP a whole multiple of it wide) that FacT factorises")
        return vit.blocks[0].fc1.out_features // d

    def merge(self, model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Factored):
                    setattr(parent, name, child.fold())
        del model.fact
        return model
