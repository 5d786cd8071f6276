"""Bottleneck adapters (Houlsby et al., 2019): a residual bottleneck on the attention and/or MLP branch of every block.

    A(y) = y + scale * up(dropout(act(down(y))))

The defaults are NOAH's adapter (ZhangYuanhan-AI/NOAH @e9c55f3, model/supernet_vision_transformer_timm.py Block,
model/module/adapter_super.py; experiments/Adapter/ViT-B_prompt_adapter_8.yaml), whose VTAB-1k row (NOAH Table 1,
0.16M) `adapter` is compared with: after the MLP, on its output after stochastic depth,
x + A(drop_path(mlp(norm2(x)))); QuickGELU (x * sigmoid(1.702 x)); dropout 0.1 (supernet_train_prompt.py
--drop_rate_adapter); Xavier-uniform weights and N(0, 1e-6) biases; scale 1; bottleneck 8: 12 x (768*8+8 + 8*768+768)
= 156,768 on ViT-B/16. Checked against NOAH's Block forward on a random ViT: see the README.

Options, for every adapter row of the published sources:
- placement: `mlp` (after the MLP, Pfeiffer et al.), `attn`, `both` (after attention and MLP, Houlsby et al.),
  `parallel` (beside the MLP, reading the block's stream before the MLP's norm, as AdaptFormer's released code and
  PETL_Vision's `parallel` with ft_mlp_ln `before`: x + drop_path(mlp(norm2(x))) + scale * up(...(x)));
- init: `xavier` (NOAH; PETL_Vision `xavier`), `houlsby` (near identity: truncated normal std 0.01 within 2 std,
  biases zero, Houlsby's paper), `zeros` (LoRA-style: Xavier-uniform down, zero up-projection and biases: the
  model starts exactly unchanged; PETL_Vision `lora_xavier`);
- act: `quickgelu` (NOAH), `gelu`, `relu` (PETL_Vision, AdaptFormer);
- drop_path_order, where the branch's stochastic depth sits: `before` the adapter (NOAH: A(drop_path(y)); beside
  the MLP, the adapter is never dropped, as AdaptFormer's block), `after` it (drop_path(A(y)): one draw drops both),
  `twice` (PETL_Vision model/block.py `sequential_after`: drop_path(A(drop_path(y))), two draws; beside the MLP
  drop_path(mlp) + drop_path(adapter)).
PETL_Vision's rows: `rand_h_adapter` is `placement=both` (Xavier) and `lora_p_adapter` `init=zeros`, both with
ReLU and drop_path_order twice (benchmarks/settings/petl_vision.yaml sets them). PETL_Vision applies a block's
LayerScale twice in `twice` order; here it scales the branch once (ViT-B/16 has none).

Structure: a sequential adapter wraps the branch's drop-path module (the last step before the residual add, in
NOAH's block and timm's), so it reads the branch output; a parallel one takes the MLP's place with the block's
pre-MLP norm, LayerScale and drop-path moved inside (as adaptformer). Non-linear, so it does not merge.

Weight decay: timm's rule (no decay on 1-d tensors and biases): NOAH trains through timm's create_optimizer
(supernet_train_prompt.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from timm.layers import QuickGELU
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SOURCE = ("after the MLP, on drop_path(mlp) (drop_path_order before), QuickGELU, dropout 0.1, Xavier init, scale 1, "
          "bottleneck 8: ZhangYuanhan-AI/NOAH model/supernet_vision_transformer_timm.py Block.forward, model/module/"
          "adapter_super.py, supernet_train_prompt.py, experiments/Adapter/ViT-B_prompt_adapter_8.yaml; AdamW lr 1e-3, "
          "wd 1e-4: configs/Adapter/VTAB/slurm_train_adapter_vtab.sh")
ACTS = {"quickgelu": QuickGELU, "gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class AdapterConfig:
    bottleneck: Annotated[int, Range(min=1)] = 8
    placement: Literal["mlp", "attn", "both", "parallel"] = "mlp"
    scale: float = 1.0
    init: Literal["xavier", "houlsby", "zeros"] = "xavier"
    act: Literal["quickgelu", "gelu", "relu"] = "quickgelu"
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1  # on the bottleneck activations
    drop_path_order: Literal["before", "after", "twice"] = "before"  # the branch's stochastic depth vs the adapter


class Bottleneck(nn.Module):
    """The adapter's change, scale * up(dropout(act(down(x)))); the caller adds the residual."""

    def __init__(self, dim: int, cfg: AdapterConfig):
        super().__init__()
        self.down = nn.Linear(dim, cfg.bottleneck)
        self.act = ACTS[cfg.act]()
        self.dropout = nn.Dropout(cfg.dropout)
        self.up = nn.Linear(cfg.bottleneck, dim)
        self.scale = cfg.scale
        for layer in (self.down, self.up):
            if cfg.init == "houlsby":
                nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(layer.bias)
            else:  # xavier; zeros then zeroes the up-projection and both biases
                nn.init.xavier_uniform_(layer.weight)
                nn.init.normal_(layer.bias, std=1e-6)
        if cfg.init == "zeros":
            for tensor in (self.up.weight, self.up.bias, self.down.bias):
                nn.init.zeros_(tensor)

    def forward(self, x):
        return self.scale * self.up(self.dropout(self.act(self.down(x))))


class AdaptedDropPath(nn.Module):
    """A branch's drop-path with a sequential adapter A(y) = y + bottleneck(y) on the branch output y:
    before: A(dp(y)); after: dp(A(y)); twice: dp(A(dp(y)))."""

    def __init__(self, drop_path: nn.Module, adapter: Bottleneck, order: str):
        super().__init__()
        self.drop_path = drop_path
        self.adapter = adapter
        self.order = order

    def forward(self, y):
        if self.order == "after":
            return self.drop_path(y + self.adapter(y))
        y = self.drop_path(y)
        y = y + self.adapter(y)
        return self.drop_path(y) if self.order == "twice" else y


class ParallelMLP(nn.Module):
    """The MLP branch with an adapter beside it reading the stream x (the block's norm, LayerScale and drop-path
    moved in): before: dp(ls(mlp(norm(x)))) + B(x); after: dp(ls(mlp(norm(x))) + B(x)); twice: dp(..) + dp(B(x))."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, layer_scale: nn.Module, drop_path: nn.Module,
                 adapter: Bottleneck, order: str):
        super().__init__()
        self.norm, self.mlp, self.layer_scale, self.drop_path = norm, mlp, layer_scale, drop_path
        self.adapter = adapter
        self.order = order

    def forward(self, x):
        if self.order == "twice":  # PETL_Vision's order of draws: the MLP's drop-path, then the adapter's
            branch = self.drop_path(self.layer_scale(self.mlp(self.norm(x))))
            return branch + self.drop_path(self.adapter(x))
        delta = self.adapter(x)  # first, as AdaptFormer's block: its dropout draws before the drop-path
        branch = self.layer_scale(self.mlp(self.norm(x)))
        return self.drop_path(branch) + delta if self.order == "before" else self.drop_path(branch + delta)


class Adapter(Method):
    name = "adapter"
    description = "residual bottleneck adapters after (or beside) the MLP and/or attention of each block"
    paper = "Houlsby et al., ICML 2019; VTAB-1k numbers, formulation and recipe from NOAH (Zhang et al., 2022)"
    Config = AdapterConfig
    families = ("vit", "swin")  # needs each block's attention and MLP outputs (last dim = width)
    recipe = "noah"  # the 0.16M adapter numbers come from NOAH
    decay_rule = "timm"  # see the module docstring
    defaults_source = SOURCE

    def check_fit(self, model):
        body = anatomy(model, self.name)
        refuse_above(self, "option 'bottleneck'", self.config.bottleneck, min(b.dim for b in body.blocks),
                     "the width of the blocks it adapts")
        for i, block in enumerate(body.blocks):
            if len(block.drop_paths) != 2 or (self.config.placement == "parallel" and (
                    block.mlp is None or len(block.norms) != 2)):
                raise UserError(f"method {self.name}: block {i} lacks the norms, MLP or drop-paths of a pre-norm "
                                "block, where the adapter sits")

    def apply(self, model):
        cfg = self.config
        self.check_fit(model)
        for block in anatomy(model, self.name).blocks:
            if cfg.placement == "parallel":
                norm, drop_path = block.norms[1], block.drop_paths[1]
                layer_scale = block.branch_scales[1] if block.branch_scales else nn.Identity()
                for part in (norm, drop_path, *block.branch_scales[1:2]):  # they move into the wrapper
                    replace_module(block.module, part, nn.Identity())
                block.set_part("mlp", ParallelMLP(norm, block.mlp, layer_scale, drop_path,
                                                  Bottleneck(block.dim, cfg), cfg.drop_path_order))
                continue
            branches = {"attn": (0,), "mlp": (1,), "both": (0, 1)}[cfg.placement]
            for k in branches:
                drop_path = block.drop_paths[k]
                replace_module(block.module, drop_path,
                               AdaptedDropPath(drop_path, Bottleneck(block.dim, cfg), cfg.drop_path_order))
        return model
