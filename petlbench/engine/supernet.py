"""NOAH's supernet (Zhang et al., "Neural Prompt Search"): the largest prompts, LoRA and adapter of every block built
once, and a subnet that uses the first k tokens, ranks or bottleneck channels of each (AutoFormer-style weight
sharing, ZhangYuanhan-AI/NOAH @e9c55f3 model/supernet_vision_transformer_timm.py `set_sample_config`,
model/module/adapter_super.py). The supernet run samples a random subnet per training batch
(supernet_engine_prompt.py `sample_configs`); the search then scores subnets on val with these shared weights.

The modules are methods/noah.py's at a settable size (`active`), drawn from the same initialisation, so the
supernet at a subnet computes what `noah:subnet=<that subnet>` computes with the same tensors (tested).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from timm.layers import QuickGELU

from petlbench.methods.adapter import AdaptedDropPath
from petlbench.methods.noah import KINDS, Noah, count, uniform_init

Sizes = dict[str, list[int]]


class SuperPrompts(nn.Module):
    """Block i's prompts: the first `active` of the supernet's tokens replace the last `strip` tokens of the stream
    (the previous block's prompts); `active` 0 leaves the stream as it is (NOAH's Block.forward)."""

    def __init__(self, dim: int, largest: int, dropout: float, super_size: int):
        super().__init__()
        self.prompts = nn.Parameter(uniform_init((1, max(largest, super_size), dim), largest, 1, nn.init.xavier_uniform_))
        self.dropout = nn.Dropout(dropout)
        self.active, self.strip = largest, 0

    def forward(self, x):
        if not self.active:
            return x
        if self.strip:
            x = x[:, :-self.strip]
        p = self.dropout(self.prompts[:, :self.active]).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x, p], dim=1)


class SuperStrip(nn.Module):
    """After the last block: drop the `count` prompt tokens the stream still carries."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def forward(self, x):
        return x[:, :-self.count] if self.count else x


class SuperLoRA(nn.Module):
    """NOAH's fused-qkv LoRA with rank `active` of the largest: qkv(x) + B[:, :r] A[:r] dropout(x)."""

    def __init__(self, qkv: nn.Linear, largest: int, dropout: float, super_size: int):
        super().__init__()
        self.qkv = qkv
        self.lora_a = nn.Parameter(uniform_init((max(largest, super_size), qkv.in_features), largest, 0,
                                                lambda t: nn.init.kaiming_uniform_(t, a=5 ** 0.5)))
        self.lora_b = nn.Parameter(torch.zeros(qkv.out_features, largest))
        self.dropout = nn.Dropout(dropout)
        self.active = largest

    def forward(self, x):
        out = self.qkv(x)
        if not self.active:
            return out
        a, b = self.lora_a[:self.active].to(x.dtype), self.lora_b[:, :self.active].to(x.dtype)
        return out + F.linear(F.linear(self.dropout(x), a), b)


class SuperAdapter(nn.Module):
    """NOAH's AdapterSuper branch at bottleneck `active`: up(dropout(QuickGELU(down(y)))) with the first channels."""

    def __init__(self, dim: int, largest: int, dropout: float, super_size: int):
        super().__init__()
        wide = max(largest, super_size)
        self.down_weight = nn.Parameter(uniform_init((wide, dim), largest, 0, nn.init.xavier_uniform_))
        self.down_bias = nn.Parameter(uniform_init((wide,), largest, 0, lambda t: nn.init.normal_(t, std=1e-6)))
        self.up_weight = nn.Parameter(uniform_init((dim, wide), largest, 1, nn.init.xavier_uniform_))
        self.up_bias = nn.Parameter(torch.empty(dim).normal_(std=1e-6))
        self.act, self.dropout = QuickGELU(), nn.Dropout(dropout)
        self.active = largest

    def forward(self, y):
        if not self.active:
            return y.new_zeros(())
        k = self.active
        hidden = self.dropout(self.act(F.linear(y, self.down_weight[:k].to(y.dtype), self.down_bias[:k].to(y.dtype))))
        return F.linear(hidden, self.up_weight[:, :k].to(y.dtype), self.up_bias.to(y.dtype))


class NoahSupernet(Noah):
    """`noah:subnet=search` in its supernet role: every block holds the space's largest prompts, LoRA and adapter,
    and each training batch trains a subnet drawn at random (`training_loss`), as NOAH's supernet training does.
    Built by the search phase (petlbench.engine.noah_search); never a table row."""

    def identity(self):
        return {**super().identity(), "role": "supernet"}

    def check_fit(self, model):
        body = anatomy(model, self.name)
        if any(b.qkv is None for b in body.blocks) or any(len(b.drop_paths) != 2 for b in body.blocks):
            raise UserError("method noah: subnet=search needs ViT blocks with a fused qkv and the MLP's drop-path")
        largest = max(self.config.choices)
        if largest > body.embed_dim:
            raise UserError(f"method noah: choice {largest} is above the width {body.embed_dim} it adapts")

    def apply(self, model):
        cfg = self.config
        self.check_fit(model)
        blocks = anatomy(model, self.name).blocks
        largest = max(cfg.choices)
        for i, block in enumerate(blocks):
            replace_module(block.attn, block.qkv, SuperLoRA(block.qkv, largest, cfg.dropout, cfg.super_size))
            replace_module(block.module, block.drop_paths[1], AdaptedDropPath(
                block.drop_paths[1], SuperAdapter(block.dim, largest, cfg.dropout, cfg.super_size), "before"))
            wrapped = [SuperPrompts(block.dim, largest, cfg.dropout, cfg.super_size), block.module]
            if i == len(blocks) - 1:
                wrapped.append(SuperStrip())
            block.replace(nn.Sequential(*wrapped))
        # the batches' subnets: drawn from the run's seed (build_model seeded torch just before apply; NOAH seeds
        # Python's random with the epoch number, the same draws for every seed)
        self.sampler = random.Random(int(torch.randint(0, 2 ** 31 - 1, ())))
        set_subnet(model, full_subnet(cfg.choices, len(blocks)))
        return model

    def training_loss(self, model, images, labels, loss_fn):
        depth = len(parts(model)[0])
        set_subnet(model, sample(self.config.choices, depth_choices(depth), depth, self.sampler))
        return loss_fn(model(images), labels)


def parts(model: nn.Module) -> tuple[list, list, list, list]:
    """The supernet's prompts, LoRA, adapters (one per block, in block order) and its final strip."""
    found = {kind: [] for kind in (SuperPrompts, SuperLoRA, SuperAdapter, SuperStrip)}
    for module in model.modules():
        if type(module) in found:
            found[type(module)].append(module)
    return tuple(found.values())


def full_subnet(choices: list[int], depth: int) -> Sizes:
    return {kind: [max(choices)] * depth for kind in KINDS}


def depth_choices(depth: int) -> list[int]:
    """How many leading blocks a module type may occupy: NOAH's {3, 6, 9, 12} of 12 blocks, i.e. the quarters of
    the depth (rounded up, at least 1) on other depths."""
    return sorted({max(1, -(-depth * q // 4)) for q in (1, 2, 3, 4)})


def sample(choices: list[int], depths: list[int], depth: int, rng: random.Random) -> Sizes:
    """NOAH's `sample_configs`: per module type a depth d, then a random choice for each of the first d blocks."""
    found = {}
    for kind in KINDS:
        d = rng.choice(depths)
        found[kind] = [rng.choice(choices) for _ in range(d)] + [0] * (depth - d)
    return found


def set_subnet(model: nn.Module, sizes: Sizes) -> None:
    """Set every block's active sizes (NOAH's `set_sample_config`): block i strips block i-1's prompts only when
    both hold prompts; the last block's strip drops what the stream still carries."""
    prompts, loras, adapters, (strip,) = parts(model)
    carried, last = 0, 0
    for i, (p, r, a) in enumerate(zip(*(sizes[kind] for kind in KINDS), strict=True)):
        prompts[i].active, loras[i].active, adapters[i].active = p, r, a
        prompts[i].strip = last if p else 0
        if p:
            carried, last = carried - last + p, p
        else:
            last = 0
    strip.count = carried
