"""PACE (Ni et al., NeurIPS 2024): consistency regularisation of an adapter method under multiplicative noise.

A wrapper: `pace:base=loramul_vptadd` (the paper's LoRA + VPT, the default), `pace:base=adapter`, `pace:base=lora`,
`pace:base=adapter(bottleneck=16,placement=both)`, `pace:base=lora+vpt_deep` (bases applied in order). It builds the
base method(s) through the registry, then wraps every adapter branch they added (found by type among the new
modules: loramul_vptadd's Branch, adapter's and adaptformer's Bottleneck, peft LoRA's up-projections) in `Noisy`,
which multiplies the branch's output by 1 + sigma_l * eps, eps ~ N(0, 1) per sample and channel (shared by the
tokens), in training only. Training runs each batch twice in one forward (the batch concatenated with itself, so
the two copies draw different noise) and minimises

    CE(f1, y) + lam * mean_over_batch ||f1 - f2||^2        (f = logits; the official compute_loss_pace)

Source: MaxwellYaoNi/PACE Vision/pace/pace_ops.py (MultiplicativeNoiseAdapter, PACE_MSELoss, compute_loss_pace),
sharable_dropout.py and train.py, read and re-written. As there:
- sigma falls linearly with depth (`depth=linear`): block 0 none, block i of L sigma (L + 1 - i) / L (train.py:
  ViT-B "works better without adding noise to the first block"); `depth=constant` puts sigma everywhere;
- stochastic depth draws one mask per image shared by its two copies, and (SharableDropPath) the mask is divided by
  its batch mean instead of timm's keep probability; timm's DropPath modules are replaced by `SharedDropPath`.
Modes: `mode=pace` (the official `pace_type pace`, its best) as above; `mode=fast` (PACE_fast, `pace_type fast`,
compute_loss_pace_fast): one noisy pass per batch, and the consistency term compares each image's logits with those
it had at its previous visit (the previous epoch), kept per image without gradient, zeros before the first:
CE(f, y) + lam * mean ||f - f_prev||^2. The loop hands the method each batch's image positions
(`Method.training_batch`); the stored logits are float32, reset by `apply` (each run). The official README says fast
wants a larger sigma and a smaller lam but releases no values; the defaults stay pace's. Not implemented:
PACE_lazy_half. lam = 0 trains one pass (the consistency term vanishes), so sigma = 0, lam = 0 is the base exactly.
Departure: the official code also wraps the head (sigma / L on the logits, HeadLinear); the head here belongs to the
runner (its features cache, `get_classifier`), so it is not perturbed. Recipe: the official train.py and its one
VTAB-1k command (cifar): AdamW lr 1e-3, wd 1e-4 on every trained tensor, batch 64, 300 epochs, 10 warm-up, drop-path
0.1; its cosine steps per epoch to lr 1e-5, here per step to 0. The bases' own recipes are not used.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from peft.tuners.lora import LoraLayer
from timm.layers import DropPath
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.methods import adapter, adaptformer, loramul_vptadd
from petlbench.options import Range
from petlbench.registry import parse_method_spec

BRANCHES = (loramul_vptadd.Branch, adapter.Bottleneck, adaptformer.Bottleneck)  # modules whose output is the change
SOURCE = ("sigma 1.2, lam 1: MaxwellYaoNi/PACE Vision/README.md, its one VTAB-1k command (cifar; lam 1 in both "
          "released commands, few-shot flowers sigma 1.5); " + loramul_vptadd.SOURCE)


@dataclass
class PACEConfig:
    base: str = "loramul_vptadd"  # method name(s) joined by '+', each optionally name(key=value,...)
    sigma: Annotated[float, Range(min=0)] = 1.2  # the noise's standard deviation at the first perturbed block
    lam: Annotated[float, Range(min=0)] = 1.0  # weight of the consistency term
    depth: Literal["linear", "constant"] = "linear"  # sigma per block: falling with depth (official) or constant
    mode: Literal["pace", "fast"] = "pace"  # two passes per batch, or one and the previous epoch's logits (PACE_fast)


class Noisy(nn.Module):
    """`inner`'s output times N(1, sigma^2) noise per sample and channel, in training only."""

    def __init__(self, inner: nn.Module, sigma: float):
        super().__init__()
        self.inner = inner
        self.sigma = sigma

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.inner(*args, **kwargs)
        if not self.training or self.sigma == 0:
            return out
        shape = [out.shape[0]] + [1] * (out.dim() - 2) + [out.shape[-1]]
        noise = torch.randn(shape, device=out.device) * self.sigma + 1  # drawn in fp32, as the official module
        return out * noise.to(out.dtype)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"


class SharedDropPath(nn.Module):
    """Stochastic depth whose mask is shared by the `copies` stacked copies of a batch (official SharableDropPath)."""

    def __init__(self, drop_prob: float, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob, self.scale_by_keep, self.copies = drop_prob, scale_by_keep, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if keep > 0 and self.scale_by_keep:
            mask.div_(keep)
        if self.copies > 1:
            mask = torch.cat([mask[: x.shape[0] // self.copies]] * self.copies)
        return x * (mask / (mask.mean() + 1e-12)).detach()


@contextlib.contextmanager
def paired(model: nn.Module):
    """The forward inside sees each image twice (the batch stacked on itself): one drop-path draw per image."""
    shared = [m for m in model.modules() if isinstance(m, SharedDropPath)]
    for m in shared:
        m.copies = 2
    try:
        yield
    finally:
        for m in shared:
            m.copies = 1


def consistency(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """||f1 - f2||^2 summed over classes, averaged over the batch (PACE_MSELoss)."""
    return (first - second).square().sum(dim=-1).mean()


def parse_bases(text: str) -> list[Method]:
    methods = []
    for part in str(text).split("+"):
        name, paren, opts = part.strip().partition("(")
        if paren and not opts.endswith(")"):
            raise UserError(f"method pace: option 'base' {text!r}: expected name(key=value,...), got {part!r}")
        if name.strip() == "pace":
            raise UserError("method pace: option 'base' cannot be pace")
        opts = opts[:-1].replace(",", ":")
        base = parse_method_spec(f"{name}:{opts}" if opts else name)
        if base.closed_form or not base.trains or base.needs_text:
            raise UserError(f"method pace: base {name!r} trains no adapter on the image tower")
        methods.append(base)
    return methods


class PACE(Method):
    name = "pace"
    description = "an adapter method with multiplicative noise on its branches and a two-pass consistency loss"
    paper = "PACE (Ni et al., NeurIPS 2024)"
    Config = PACEConfig
    families = ("vit",)  # the depth rule (and the official code's ViT-B) counts a ViT's blocks
    recipe = "noah"
    train_defaults = {"epochs": 300}
    decay_rule = "all"  # the official AdamW decays every trained tensor
    defaults_source = SOURCE

    def __init__(self, config=None):
        super().__init__(config)
        self.bases = parse_bases(self.config.base)

    def check_fit(self, model):
        for base in self.bases:
            base.check_fit(model)

    def apply(self, model):
        self.history, self.index, self.cursor = None, None, 0  # PACE_fast's per-image logits: each run its own
        before = set(map(id, model.modules()))
        for base in self.bases:
            model = base.apply(model)
        found = branches([m for m in model.modules() if id(m) not in before])
        if not found:
            raise UserError(f"method pace: base {self.config.base!r} adds no branch PACE knows how to perturb "
                            "(loramul_vptadd, adapter, adaptformer, lora)")
        sigmas = self.sigmas(model, found)
        for branch, sigma in zip(found, sigmas):
            replace_module(model, branch, Noisy(branch, sigma))
        for drop in [m for m in model.modules() if isinstance(m, DropPath)]:
            replace_module(model, drop, SharedDropPath(drop.drop_prob, drop.scale_by_keep))
        return model

    def sigmas(self, model: nn.Module, found: list[nn.Module]) -> list[float]:
        blocks = anatomy(model, self.name).blocks
        depth = {id(m): i for i, block in enumerate(blocks) for m in block.module.modules()}
        if any(id(b) not in depth for b in found):
            raise UserError("method pace: the base added a branch outside the blocks; PACE's sigma is per block")
        s, L = self.config.sigma, len(blocks)
        if self.config.depth == "constant":
            return [s] * len(found)
        return [0.0 if depth[id(b)] == 0 else s * (L + 1 - depth[id(b)]) / L for b in found]

    def training_batch(self, index):
        self.index, self.cursor = index, 0

    def training_loss(self, model, images, labels, loss_fn):
        if self.config.lam == 0:
            return loss_fn(model(images), labels)
        if self.config.mode == "fast":
            logits = model(images)
            return loss_fn(logits, labels) + self.config.lam * consistency(logits, self.previous(logits))
        with paired(model):
            first, second = model(torch.cat([images, images])).chunk(2)
        return loss_fn(first, labels) + self.config.lam * consistency(first, second)

    def previous(self, logits: torch.Tensor) -> torch.Tensor:
        """The micro-batch's images' logits at their previous visit (zeros at the first); stores the new ones."""
        if getattr(self, "index", None) is None:
            raise RuntimeError("pace:mode=fast needs each batch's image positions (Method.training_batch)")
        index = self.index[self.cursor: self.cursor + len(logits)].to(logits.device)
        self.cursor += len(logits)
        size = int(index.max()) + 1
        if self.history is None or len(self.history) < size or self.history.shape[1] != logits.shape[1]:
            grown = torch.zeros(size, logits.shape[1], device=logits.device)
            if self.history is not None:
                grown[: len(self.history)] = self.history
            self.history = grown
        with torch.no_grad():
            stored = self.history[index].clone()
            self.history[index] = logits.detach().float()
        return stored.to(logits.dtype)

    def merge(self, model):
        if len(self.bases) != 1:
            return super().merge(model)
        for noisy in [m for m in model.modules() if isinstance(m, Noisy)]:
            replace_module(model, noisy, noisy.inner)
        for drop in [m for m in model.modules() if isinstance(m, SharedDropPath)]:
            replace_module(model, drop, DropPath(drop.drop_prob, drop.scale_by_keep))
        return self.bases[0].merge(model)


def branches(added: list[nn.Module]) -> list[nn.Module]:
    """The adapter branches among the modules a base added: whole branch modules, or peft LoRA's up-projections
    (the LoRA change is lora_B's output times a constant scale)."""
    found = []
    for m in added:
        if isinstance(m, BRANCHES):
            found.append(m)
        elif isinstance(m, LoraLayer):
            if any(key in getattr(m, "lora_variant", {}) for key in m.lora_B):
                raise UserError("method pace: a LoRA variant (DoRA) has no separate branch output to perturb")
            found.extend(m.lora_B.values())
    return found
