"""SPT (He et al., ICCV 2023): sensitivity-aware PEFT. The task's training data says where the trainable parameters
go: each candidate tensor's entries are scored by their sensitivity, the top-tau entries found; a weight matrix with
enough sensitive entries gets a LoRA (SPT-LoRA) or an adapter (SPT-Adapter) instead, the other sensitive entries
train in place (unstructured), all under one parameter budget. Learned from ziplab/SPT @e385f67 (engine.py
get_sensitivity, get_structured_param_num; model/vision_transformer_timm.py StructuredTuningModule,
AttentionSPTParallel/Seq, MlpSPTParallel/Seq, VisionTransformerSPT.freeze_stages; configs/vtab_supervised_spt_*.sh):

- candidates: every tensor but the head's, cls_token, pos_embed and the patch embedding: per block the two norms'
  weights and biases, q, k, v (timm's fused qkv split, petlbench.qkv), the attention projection, fc1, fc2 (weights
  and biases); the final norm. Matrices are the Linears' weights, vectors the rest;
- sensitivity: the squared gradient of the cross-entropy (the fresh head), summed over 16 batches of 32 training
  images (`--sensitivity_batch_num` 16, the scripts' batch 32), model in train mode (drop-path 0.1 draws): the
  code's `grad ** 2` (the paper's first-order Taylor term with the step -eps g), not |g w|;
- placement at tau (the count of top entries over all candidates): a matrix whose count s of top entries reaches
  cost / alpha gets a structured module (cost: LoRA r (in + out), adapter 2 r out + r + out), else its s entries
  train; a vector with s >= n / beta trains whole (`--structured_vector`), else its s entries; alpha 10, beta 5, r 8;
- what trains: the class token, the chosen entries (as deltas), the structured modules, the head. SPT-LoRA adds
  B A drop(x) beside the layer; SPT-Adapter up(gelu(down(drop(y)))) after it (q, k, v, fc1, fc2) and beside the
  attention projection; dropout 0.1 on their input (not the projection's) and a drop-path 0.1 on their output, as
  the released scripts run them (no `--no_structured_drop_*`).

The budget (trainable, head excluded, class token included, as the code's `params`) is met exactly: tau is the
largest whose count fits, and the remainder (less than the next switch's jump) goes to the next most sensitive
entries of the unstructured tensors. The code instead saves, per budget in {0.2, ..., 1.0}M, the tau on a 0.02M grid
whose count is closest (above or below). Every trained value lives in one pool (petlbench.pooled), sized before
any data is seen; `select` fills in the layout. SPT-LoRA merges into a plain ViT; SPT-Adapter does not. Departures: the sensitivity batches are drawn in the run's seeded
order (the code: the first 512 images of the split file); q, k and v draw their dropout apiece (the code shares one
draw); weight decay follows timm's rule, so the 1-D pool is never decayed (the code decays the 2-D LoRA and adapter
weights at wd 1e-4; the sparse deltas, biases and class token it does not). The code counts unstructured entries
of the norms in its budget but never trains them (replace_linear swaps Linears only); here they train.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range
from petlbench.pooled import NONE, Pool, Pooled, PooledLinear, PooledNorm, structured_size
from petlbench.qkv import fuse_qkv, split_qkv


@dataclasses.dataclass
class SPTConfig:
    structured: Literal["lora", "adapter"] = "lora"  # SPT-LoRA or SPT-Adapter
    budget: Annotated[float, Range(gt=0)] = 0.4  # millions trained but the head (the code's param_req_<budget>)
    rank: Annotated[int, Range(min=1)] = 8  # low_rank_dim
    alpha: Annotated[float, Range(gt=0)] = 10.0  # a matrix is structured when its top entries reach cost / alpha
    beta: Annotated[float, Range(gt=0)] = 5.0  # a vector trains whole when its top entries reach n / beta
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.1  # on the structured modules' input
    drop_path: Annotated[float, Range(min=0, lt=1)] = 0.1  # on their output
    sensitivity_batches: Annotated[int, Range(min=1)] = 16
    sensitivity_batch: Annotated[int, Range(min=1)] = 32


def wrapped(model: nn.Module) -> list[tuple[str, Pooled]]:
    """The candidates' wrappers in the code's parameter order (norm1, q, k, v, proj, norm2, fc1, fc2; final norm)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Pooled)]


def tensors_of(module: Pooled) -> tuple[nn.Parameter, nn.Parameter | None]:
    base = module.layer if isinstance(module, PooledLinear) else module.norm
    return base.weight, base.bias


def placement(scores: list[torch.Tensor], costs: list[int | None], alpha: float, beta: float, size: int) -> dict:
    """Where `size` trainable values go, from each candidate's scores (costs: a matrix's structured count, None for
    a vector): the largest tau whose count fits, each tensor 'structured', 'whole' or its entries; the remainder
    to the next entries of the unstructured tensors. Returns tau, kinds, entries (flat indices per tensor), count."""
    sizes = torch.tensor([s.numel() for s in scores])
    order = torch.sort(torch.cat([s.flatten().float().cpu() for s in scores]), descending=True, stable=True).indices
    owner = torch.repeat_interleave(torch.arange(len(scores)), sizes)[order]

    def decide(tau: int):
        top = torch.bincount(owner[:tau], minlength=len(scores)).tolist()
        kinds, count = [], 0
        for s, n, cost in zip(top, sizes.tolist(), costs):
            kind, add = (("structured", cost) if cost is not None and s >= cost / alpha
                         else ("whole", n) if cost is None and s >= n / beta else ("entries", s))
            kinds.append(kind)
            count += add
        return kinds, count

    low, high = 0, len(order)  # count(tau) never falls as tau grows: binary search for the last tau that fits
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if decide(mid)[1] <= size else (low, mid - 1)
    kinds, count = decide(low)
    loose = torch.tensor([k == "entries" for k in kinds])
    extra = order[low:][loose[owner[low:]]][:size - count]
    chosen = torch.cat([order[:low][loose[owner[:low]]], extra])
    starts = torch.cumsum(sizes, 0) - sizes
    chosen_owner = torch.repeat_interleave(torch.arange(len(scores)), sizes)[chosen]
    entries = [(chosen[chosen_owner == i] - starts[i]).sort().values for i in range(len(scores))]
    return {"tau": low, "kinds": kinds, "entries": entries, "count": count + len(extra)}


class SPT(Method):
    name = "spt"
    description = ("sensitivity-placed LoRA or adapters plus the most sensitive weight entries, under one "
                   "parameter budget (SPT-LoRA, SPT-Adapter)")
    paper = "SPT (He et al., ICCV 2023)"
    Config = SPTConfig
    families = ("vit",)  # the released code is ViT-only (Swin, ConvNeXt: README TODO)
    selects = True
    recipe = "noah"  # the released scripts: AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, drop-path 0.1
    decay_rule = "timm"  # see the module docstring
    defaults_source = ("rank 8, alpha 10, beta 5 (--structured_vector), 16 sensitivity batches of 32, structured "
                       "dropout and drop-path 0.1, AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs: ziplab/SPT @e385f67 "
                       "configs/vtab_supervised_spt_{lora,adapter}{,_sensitivity}.sh and train_spt.py's defaults; "
                       "budget 0.4M: one of the five the scripts sweep (0.2-1.0M; the per-task choice, made on test, "
                       "is not released)")

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module, bool, object]]:
        """(role, module, on the attention projection, its block) in the code's parameter order."""
        body = anatomy(model, self.name)
        found = []
        for block in body.blocks:
            if block.qkv is None or len(block.norms) != 2 or block.fc1 is None or block.fc2 is None:
                raise UserError(f"method {self.name}: a block lacks the fused qkv, norms or MLP of a ViT block")
            found += [("norm", block.norms[0], False, block), ("qkv", block.qkv, False, block),
                      ("linear", block.attn_proj, True, block), ("norm", block.norms[1], False, block),
                      ("linear", block.fc1, False, block), ("linear", block.fc2, False, block)]
        found += [("norm", n, False, None) for n in (body.final_norm, body.head_norm) if isinstance(n, nn.LayerNorm)]
        return found

    def sizes(self, model: nn.Module) -> tuple[int, int, int]:
        """(budget, pool size, the largest count any placement reaches) on this backbone."""
        budget = round(self.config.budget * 1e6)
        cls = getattr(model, "cls_token", None)
        pool = budget - (cls.numel() if isinstance(cls, nn.Parameter) else 0)
        most = 0
        for role, module, _, _ in self.candidates(model):
            linears = [module] * 3 if role == "qkv" else [module]  # q, k, v: a third of the fused rows each
            for layer in linears:
                if role == "norm":
                    most += sum(p.numel() for p in (layer.weight, layer.bias) if p is not None)
                    continue
                rows = layer.out_features // 3 if role == "qkv" else layer.out_features
                cost = structured_size(self.config.structured, self.config.rank, layer.in_features, rows)
                n = rows * layer.in_features
                most += (cost if n >= cost / self.config.alpha else n) + (rows if layer.bias is not None else 0)
        return budget, pool, most

    def check_fit(self, model):
        widths = [m.in_features for role, m, _, _ in self.candidates(model) if role != "norm"]
        refuse_above(self, "option 'rank'", self.config.rank, min(widths), "the width of the narrowest Linear")
        budget, pool, most = self.sizes(model)
        if pool < 1 or pool > most:
            raise UserError(f"method {self.name}: option 'budget' is {self.config.budget}M ({budget:,} parameters), "
                            f"expected more than the class token and at most {(most + budget - pool) / 1e6:g}M "
                            "(every candidate tensor tuned) on this backbone")

    def apply(self, model):
        cfg = self.config
        _, size, _ = self.sizes(model)
        found = self.candidates(model)
        pool = Pool(size, like=found[0][1].weight)
        model.add_module("spt_pool", pool)
        for role, module, on_proj, block in found:
            if role == "norm":
                replace_module(model, module, PooledNorm(module, pool))
                continue
            parts = [module] if role == "linear" else [(split := split_qkv(block, self.name)).q, split.k, split.v]
            for layer in parts:
                replace_module(model, layer, PooledLinear(layer, pool, cfg.structured, cfg.rank, on_proj,
                                                          cfg.dropout, cfg.drop_path))
        cls = getattr(model, "cls_token", None)
        if isinstance(cls, nn.Parameter):
            cls.requires_grad_(True)
        return model

    def select(self, model, batches):
        """Score every candidate by its summed squared gradient, place the budget, write the layout and inits."""
        cfg = self.config
        layers = wrapped(model)
        pool = model.spt_pool
        scores = sensitivity(model, [t for _, m in layers for t in tensors_of(m) if t is not None],
                             chunks(batches, cfg.sensitivity_batch, cfg.sensitivity_batches))
        costs = []  # a weight matrix's structured count; None for a vector (norm weights, every bias)
        for _, m in layers:
            costs.append(m.structured_size() if isinstance(m, PooledLinear) else None)
            costs += [None] if tensors_of(m)[1] is not None else []
        placed = placement(scores, costs, cfg.alpha, cfg.beta, pool.values.numel())
        kinds, entries = iter(placed["kinds"]), iter(placed["entries"])
        values = torch.zeros_like(pool.values)
        at, digest, structured, whole = 0, hashlib.sha256(), [], []
        for name, m in layers:
            offsets, index = [], []
            for part, tensor in zip(("weight", "bias"), tensors_of(m)):
                kind, chosen = (next(kinds), next(entries)) if tensor is not None else ("none", None)
                if kind == "whole":
                    chosen = torch.arange(tensor.numel())
                    whole.append(f"{name}.{part}")
                index.append(chosen if kind in ("entries", "whole") else torch.zeros(0, dtype=torch.long))
                offsets.append(at if len(index[-1]) else NONE)
                at += len(index[-1])
                if kind == "structured":
                    structured.append(name)
            if isinstance(m, PooledLinear):
                offsets.append(at if name in structured else NONE)
                if name in structured:
                    m.init_structured(values[at:at + m.structured_size()])
                    at += m.structured_size()
            m.set_layout(index[0], index[1], offsets)
            for t in (*index, torch.tensor(offsets)):
                digest.update(t.cpu().numpy().astype("int64").tobytes())
        with torch.no_grad():
            pool.values.copy_(values)
        return {"structured": cfg.structured, "budget": placed["count"] + model_cls_count(model), "tau": placed["tau"],
                "pool": pool.values.numel(), "used": at, "sha256": digest.hexdigest(),
                "structured_modules": structured, "whole_vectors": whole,
                "unstructured_entries": sum(len(e) for e, k in zip(placed["entries"], placed["kinds"])
                                            if k == "entries")}

    def merge(self, model):
        """SPT-LoRA folds (deltas and B A into the weights, q, k, v fused back); SPT-Adapter does not."""
        if self.config.structured != "lora":
            raise UserError("method spt: SPT-Adapter cannot be merged into the backbone's weights (its adapters "
                            "put a GELU between two Linears); SPT-LoRA can")
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, (PooledLinear, PooledNorm)):
                    setattr(parent, name, child.fold())
        del model.spt_pool
        return fuse_qkv(model)


def model_cls_count(model: nn.Module) -> int:
    cls = getattr(model, "cls_token", None)
    return cls.numel() if isinstance(cls, nn.Parameter) and cls.requires_grad else 0


def chunks(batches, size: int, count: int):
    """The first `count` batches of `size` images, re-cut from the given ones (the code's batch 32)."""
    images, labels, held = [], [], 0
    for x, y in batches:
        images.append(x), labels.append(y)
        held += len(x)
        if held >= size * count:
            break
    x, y = torch.cat(images), torch.cat(labels)
    return list(zip(x.split(size), y.split(size)))[:count]


def sensitivity(model: nn.Module, tensors: list[torch.Tensor], batches) -> list[torch.Tensor]:
    """Each tensor's squared cross-entropy gradient summed over the batches, in train mode (the code's
    get_sensitivity: drop-path draws)."""
    sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    was_training = model.training
    model.train()
    for t in tensors:
        t.requires_grad_(True)
    try:
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            for total, grad in zip(sums, torch.autograd.grad(loss, tensors)):
                total += grad.float() ** 2
    finally:
        for t in tensors:
            t.requires_grad_(False)
        model.train(was_training)
    return sums
