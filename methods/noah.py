"""NOAH (Zhang et al., "Neural Prompt Search", arXiv 2206.04673): a subnet of VPT-deep prompts, LoRA and adapters
with a size per module and per block, run as NOAH's retrain step runs a searched subnet.

The modules are NOAH's supernet modules at a fixed subnet (ZhangYuanhan-AI/NOAH @e9c55f3,
model/supernet_vision_transformer_timm.py `Attention`, `Block`, `VisionTransformer`; model/module/adapter_super.py):
- prompts, block i with p_i > 0: the last p_{i-1} tokens of the stream (the previous block's prompts; none at
  block 0, and none when p_{i-1} = 0, so a prompt set that a size-0 block passed on stays) are replaced by p_i
  learned tokens appended at the end, with dropout; the carried prompts are stripped after the last block.
  Xavier-uniform drawn on the supernet's (1, super_size, width) tensor, the first p_i kept;
- LoRA, block i with r_i > 0: on the fused qkv, qkv(x) + B A dropout(x), unscaled, with one A (r x width) shared by
  q, k and v and B (3 width x r), so k is adapted too (not q and v alone). A Kaiming-uniform (a = sqrt 5), B zero;
- adapter, block i with a_i > 0: methods/adapter.py's NOAH adapter (after the MLP's drop-path, QuickGELU, dropout),
  Xavier-uniform drawn with the supernet's fan (width x super_size), biases N(0, 1e-6);
- dropout 0.1 on all three (supernet_train_prompt.py --drop_rate_{prompt,LoRA,adapter}).
Trainable outside the head: sum_i p_i D + 4 r_i D + (2 a_i D + a_i + D if a_i > 0) for width D.

Subnets (`subnet=`): `uniform` (default: every block `tokens`, `rank`, `bottleneck`, 5 each, the middle of NOAH's
VTAB-1k choice list {1, 5, 10}; not a released setting, a size that builds on any ViT), `released` (the run's task's
searched subnet, NOAH's experiments/NOAH/subnet/VTAB/ViT-B_prompt_<task>.yaml, shipped in
benchmarks/subnets/noah.yaml), a VTAB-1k task name (that task's released subnet), or a YAML file: NOAH's own
(RETRAIN: VISUAL_PROMPT_DIM, LORA_DIM, ADAPTER_DIM, PREFIX_DIM) or {prompts, lora, adapter} lists, one size per block.
The resolved sizes are part of the run's identity (editing the file is a new run) and of its record.

Departures: NOAH's model-level prompts (and their position embedding, counted by get_sampled_params_numel: p_0 D +
100 D) are replaced at block 0 before anything reads them; they are not built here, so the count above is the
official one minus those dead tensors. Prefix tuning (PREFIX_DIM) is not built (every released subnet has 0).
Prompts sit at the end of the stream as in NOAH (attention has no order, so the class token's output is the same).
`subnet=search`: NOAH's one-shot search, two phases of one sweep (petlbench.sweep.noah_search): the supernet
(petlbench.engine.supernet: these modules at the space's largest size, a random subnet per batch) trained on
train800, its evolutionary search on val200 under a parameter limit (petlbench.engine.evolution), then the chosen
subnet retrained here from scratch on train800val200 (`searched`: the sizes the search chose). The search's
options (choices, limit, population, generations, supernet_epochs, supernet_lr) are part of the identity only
under subnet=search. Before the search names a subnet, planning counts the space's largest.

Recipe: NOAH's retrain (configs/NOAH/VTAB/subnet/slurm_retrain_vtab.sh: AdamW lr 1e-3, wd 1e-4, batch 64, 100
epochs; supernet_train_prompt.py: 10 warm-up, cosine, drop-path 0.1), the `noah` recipe; timm's decay rule
(create_optimizer), which decays the 3-d prompts and 2-d weights but no bias.
"""
from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.methods.adapter import AdaptedDropPath, AdapterConfig, Bottleneck
from petlbench.options import Range, read_yaml
from petlbench.prompts import MAX_TOKENS

KINDS = ("prompts", "lora", "adapter")
NOAH_KEYS = {"prompts": "VISUAL_PROMPT_DIM", "lora": "LORA_DIM", "adapter": "ADAPTER_DIM"}
SOURCE = ("subnet sizes: NOAH's released searched subnets (ZhangYuanhan-AI/NOAH @e9c55f3 experiments/NOAH/subnet/"
          "VTAB, RETRAIN) with subnet=released; uniform 5 (the middle of the VTAB-1k choice list {1, 5, 10}, not a "
          "released setting) by default; supernet size 100 (SUPERNET dims), dropout 0.1 (supernet_train_prompt.py); "
          "recipe: configs/NOAH/VTAB/subnet/slurm_retrain_vtab.sh (lr 1e-3, wd 1e-4, batch 64, 100 epochs)")


@dataclass
class NoahConfig:
    subnet: str = "uniform"  # uniform | released | search | a VTAB-1k task name | a YAML file
    tokens: Annotated[int, Range(min=0, max=MAX_TOKENS)] = 5  # subnet=uniform: prompts per block
    rank: Annotated[int, Range(min=0)] = 5  # subnet=uniform: LoRA rank per block
    bottleneck: Annotated[int, Range(min=0)] = 5  # subnet=uniform: adapter width per block
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1  # prompt, LoRA-input and adapter dropout
    super_size: Annotated[int, Range(min=1)] = 100  # the supernet's largest size: the fan of the init
    # subnet=search only (petlbench.sweep.noah_search; sources in SEARCH_SOURCE): the search space's sizes per
    # module and block, the parameter limit (millions, head excluded), the evolution's population and generations,
    # and the supernet's training (epochs, lr)
    choices: list[int] = field(default_factory=lambda: [1, 5, 10])
    limit: Annotated[float, Range(min=0)] = 0.64
    population: Annotated[int, Range(min=2)] = 50
    generations: Annotated[int, Range(min=0)] = 15
    supernet_epochs: Annotated[int, Range(min=1)] = 500
    supernet_lr: Annotated[float, Range(min=0)] = 5e-4


SEARCH_KEYS = ("choices", "limit", "population", "generations", "supernet_epochs", "supernet_lr")
SEARCH_SOURCE = ("search: experiments/NOAH/supernet/supernet-B_prompt_VTAB.yaml (choices {1, 5, 10} per block, "
                 "depths {3, 6, 9, 12} of 12, supernet size 100); configs/NOAH/VTAB/supernet/slurm_train_vtab.sh "
                 "(supernet on train800: lr 5e-4, wd 1e-4, 500 epochs, batch 64); configs/NOAH/VTAB/search/"
                 "slurm_search_vtab.sh and evolution.py (on val200: 15 generations, population 50, top 10, 25 "
                 "mutations with m_prob 0.2, s_prob 0.4, 25 crossovers, param limit 0.64M by default)")


def released_subnets() -> dict[str, Any]:
    """The shipped file of NOAH's released subnets (generated by petlbench.tools.noah_subnets)."""
    path = importlib.resources.files("petlbench.benchmarks") / "subnets" / "noah.yaml"
    return read_yaml(Path(str(path)), "NOAH's released subnets")


def check_sizes(sizes: dict[str, Any], where: str) -> dict[str, list[int]]:
    if not isinstance(sizes, dict) or set(sizes) != set(KINDS):
        raise UserError(f"{where}: expected the keys {', '.join(KINDS)} (one size per block each)")
    lengths = set()
    for kind in KINDS:
        values = sizes[kind]
        if not isinstance(values, list) or not all(type(v) is int and v >= 0 for v in values):
            raise UserError(f"{where}: {kind} should be a list of sizes >= 0, one per block, got {values!r}")
        lengths.add(len(values))
    if len(lengths) != 1:
        raise UserError(f"{where}: prompts, lora and adapter list different numbers of blocks ({sorted(lengths)})")
    return {kind: list(sizes[kind]) for kind in KINDS}


def read_subnet_file(path: Path) -> dict[str, list[int]]:
    where = f"method noah: subnet file {path}"
    data = read_yaml(path, "a NOAH subnet (RETRAIN section) or {prompts, lora, adapter} lists")
    if isinstance(data, dict) and "RETRAIN" in data:
        retrain = data["RETRAIN"]
        if not isinstance(retrain, dict) or any(NOAH_KEYS[k] not in retrain for k in KINDS):
            raise UserError(f"{where}: RETRAIN needs {', '.join(NOAH_KEYS.values())}")
        if any(retrain.get("PREFIX_DIM") or []):
            raise UserError(f"{where}: PREFIX_DIM is not 0; petlbench does not build NOAH's prefix tuning")
        data = {k: retrain[NOAH_KEYS[k]] for k in KINDS}
    return check_sizes(data, where)


def uniform_init(shape: tuple[int, ...], keep: int, dim: int, init) -> torch.Tensor:
    """`init` applied to the supernet-sized tensor, then its first `keep` entries along `dim` (NOAH slices)."""
    full = torch.empty(shape)
    init(full)
    return full.narrow(dim, 0, keep).clone()


class TailPrompts(nn.Module):
    """Before a block: drop the stream's last `strip` tokens (the previous block's prompts), append this block's."""

    def __init__(self, prompts: nn.Parameter, strip: int, dropout: float):
        super().__init__()
        self.prompts = prompts
        self.strip = strip
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if self.strip:
            x = x[:, :-self.strip]
        p = self.dropout(self.prompts).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x, p], dim=1)

    def extra_repr(self):
        return f"tokens={self.prompts.shape[1]}, strip={self.strip}"


class StripTail(nn.Module):
    """After the last block: drop the prompts the stream still carries."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def forward(self, x):
        return x[:, :-self.count]


class FusedLoRA(nn.Module):
    """NOAH's LoRA on the fused qkv Linear: qkv(x) + B A dropout(x), one A for q, k and v, unscaled."""

    def __init__(self, qkv: nn.Linear, rank: int, dropout: float, super_size: int):
        super().__init__()
        self.qkv = qkv
        self.lora_a = nn.Parameter(uniform_init((max(rank, super_size), qkv.in_features), rank, 0,
                                                lambda t: nn.init.kaiming_uniform_(t, a=5 ** 0.5)))
        self.lora_b = nn.Parameter(torch.zeros(qkv.out_features, rank))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.qkv(x) + F.linear(F.linear(self.dropout(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))


def noah_adapter(dim: int, size: int, dropout: float, super_size: int) -> Bottleneck:
    """methods/adapter.py's NOAH adapter, its weights drawn as NOAH's supernet draws them (fan of super_size)."""
    adapter = Bottleneck(dim, AdapterConfig(bottleneck=size, dropout=dropout))
    wide = max(size, super_size)
    with torch.no_grad():
        adapter.down.weight.copy_(uniform_init((wide, dim), size, 0, nn.init.xavier_uniform_))
        adapter.down.bias.copy_(uniform_init((wide,), size, 0, lambda t: nn.init.normal_(t, std=1e-6)))
        adapter.up.weight.copy_(uniform_init((dim, wide), size, 1, nn.init.xavier_uniform_))
        nn.init.normal_(adapter.up.bias, std=1e-6)
    return adapter


def count(sizes: dict[str, list[int]], dim: int) -> int:
    """Trainable parameters of a subnet on blocks of width `dim` (head excluded), in closed form."""
    return sum(p * dim + 4 * r * dim + (2 * a * dim + a + dim if a else 0)
               for p, r, a in zip(sizes["prompts"], sizes["lora"], sizes["adapter"]))


class Noah(Method):
    name = "noah"
    description = "a NOAH subnet: VPT-deep prompts, LoRA on qkv and adapters, a size per module and block"
    paper = "NOAH, Neural Prompt Search (Zhang et al., arXiv 2206.04673)"
    Config = NoahConfig
    families = ("vit",)  # prompts are tokens of a ViT's sequence
    recipe = "noah"
    decay_rule = "timm"
    defaults_source = SOURCE

    def __init__(self, config=None, searched: dict[str, list[int]] | None = None):
        super().__init__(config)
        self.task: str | None = None  # set by for_task: the task whose released subnet `released` means
        self.searched = searched  # subnet=search: the sizes its search phase chose (petlbench.sweep.noah_search)

    def for_task(self, task) -> "Noah":
        if self.config.subnet != "released":
            return self
        resolved = Noah(self.config, self.searched)
        table = released_subnets()["vtab1k"]
        resolved.task = next((n for n in (task.name, *task.aliases) if n in table), None)
        if resolved.task is None:
            raise UserError(f"method noah: subnet=released: NOAH released no subnet for task {task.name!r} (it has "
                            f"{', '.join(sorted(table))}); pass subnet=FILE or subnet=uniform")
        return resolved

    def sizes(self, depth: int | None = None) -> dict[str, list[int]]:
        cfg = self.config
        if cfg.subnet == "search" and self.searched:
            return check_sizes(self.searched, "method noah: the searched subnet")
        if cfg.subnet == "search":  # before the search names one: the space's largest (planning counts it)
            if depth is None:
                raise UserError("method noah: subnet=search is found by the sweep's search phase (petlbench run "
                                "--protocol final); it names no subnet by itself")
            return {kind: [max(cfg.choices)] * depth for kind in KINDS}
        if cfg.subnet == "uniform":
            if depth is None:
                raise UserError("method noah: subnet=uniform needs the backbone's depth")
            return {"prompts": [cfg.tokens] * depth, "lora": [cfg.rank] * depth, "adapter": [cfg.bottleneck] * depth}
        if cfg.subnet == "released" and self.task is None:
            raise UserError("method noah: subnet=released picks the run's task's subnet; outside a run name the task "
                            "(subnet=cifar100) or a file")
        table = released_subnets()["vtab1k"]
        name = self.task if cfg.subnet == "released" else cfg.subnet
        if name in table:
            return check_sizes(table[name], f"released subnet {name}")
        path = Path(cfg.subnet).expanduser()
        if not path.is_file():
            raise UserError(f"method noah: subnet {cfg.subnet!r} is neither uniform, released, a VTAB-1k task with a "
                            f"released subnet ({', '.join(sorted(table))}) nor a file")
        return read_subnet_file(path)

    def identity(self) -> dict[str, Any]:
        """The options and the resolved sizes (a file's content; `released`: the task's), when they are known;
        the search's options only when it searches (older records keep their identity)."""
        ident = super().identity()
        cfg = self.config
        if cfg.subnet != "search":
            ident = {k: v for k, v in ident.items() if k not in SEARCH_KEYS}
        if cfg.subnet == "uniform" or (cfg.subnet == "released" and self.task is None) or \
                (cfg.subnet == "search" and not self.searched):
            return ident
        sizes = self.sizes()
        text = repr(sorted(sizes.items())).encode()
        return {**ident, "resolved": {**({"task": self.task} if self.task else {}), **sizes,
                                      "sha256": hashlib.sha256(text).hexdigest()[:16]}}

    def check_fit(self, model):
        body = anatomy(model, self.name)
        sizes = self.sizes(len(body.blocks))
        if len(sizes["prompts"]) != len(body.blocks):
            raise UserError(f"method noah: subnet {self.config.subnet!r} has {len(sizes['prompts'])} blocks, the "
                            f"backbone {len(body.blocks)}")
        width = body.embed_dim
        refuse_above(self, "a LoRA rank", max(sizes["lora"]), width, "the width it adapts")
        refuse_above(self, "an adapter bottleneck", max(sizes["adapter"]), width, "the width it adapts")
        refuse_above(self, "a prompt count", max(sizes["prompts"]), MAX_TOKENS, "the prompt bound")
        if any(r for r in sizes["lora"]) and any(b.qkv is None for b in body.blocks):
            raise UserError("method noah: a block has no fused qkv Linear for LoRA")
        if any(sizes["adapter"]) and any(len(b.drop_paths) != 2 for b in body.blocks):
            raise UserError("method noah: a block lacks the MLP's drop-path, where the adapter sits")
        return sizes

    def apply(self, model):
        cfg = self.config
        sizes = self.check_fit(model)
        blocks = anatomy(model, self.name).blocks
        carried, last = 0, 0
        for i, block in enumerate(blocks):
            p, r, a = sizes["prompts"][i], sizes["lora"][i], sizes["adapter"][i]
            if r:
                replace_module(block.attn, block.qkv, FusedLoRA(block.qkv, r, cfg.dropout, cfg.super_size))
            if a:
                replace_module(block.module, block.drop_paths[1], AdaptedDropPath(
                    block.drop_paths[1], noah_adapter(block.dim, a, cfg.dropout, cfg.super_size), "before"))
            parts = [block.module]
            if p:
                prompts = nn.Parameter(uniform_init((1, max(p, cfg.super_size), block.dim), p, 1,
                                                    nn.init.xavier_uniform_))
                parts.insert(0, TailPrompts(prompts, last, cfg.dropout))
                carried, last = carried - last + p, p
            else:
                last = 0  # NOAH: the next block strips nothing (sample_last_prompt_tuning_dim 0)
            if i == len(blocks) - 1 and carried:
                parts.append(StripTail(carried))
            if len(parts) > 1:
                block.replace(nn.Sequential(*parts))
        return model
