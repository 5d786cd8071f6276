"""DTL (Fu, Zhu & Wu, AAAI 2024, "DTL: Disentangled Transfer Learning for Visual Recognition"): a compact side
network (CSN) beside the frozen blocks, whose output is added back to the backbone's features in the later blocks.

With x_i the input of block i (of L), the CSN keeps one running sum and adds it back from block M on:

    s_i = s_{i-1} + B_i A_i x_i                        for i >= read_from (A_i: width -> r, B_i: r -> width)
    x_{i+1} = block_i(x_i) + fuse(swish_beta(s_i))     for i >= M (add_from), else x_{i+1} = block_i(x_i)
    swish_beta(s) = s * sigmoid(beta * s)

As heekhero/DTL @bf6c51e models/vision_transformer.py (VisionTransformer.forward, LoRALinear): A Kaiming-uniform
(a = sqrt 5, nn.Linear's own init), B zero, so the model starts as the backbone (swish(0) = 0); nothing is
detached. DTL: fuse is the identity; DTL+ (`fusion=k`): a depth-wise k x k conv (no bias, 'same' padding, one per
network) over the patch tokens on their grid, the class token passed through. Released ViT-B/16 VTAB-1k scripts
(19 tasks each): r 2, beta 100, read from block 0, add after blocks 6-11 (M = 6 = L / 2, 0-based), all 19.

Memory, the paper's point: blocks 0..M read nothing that trains, so autograd records nothing in them (their
activations are never kept for backward); from block M + 1 on the stream carries the CSN's output, and the
gradient flows back through those frozen blocks (5 of 12 at the defaults), as in the released code.

The head: DTL's ViT pools the mean of the patch tokens and then applies the backbone's final norm (timm's
'avg' pool with the final norm moved after pooling). `pool=avg` (the default) does that by moving `norm` to
`fc_norm` and setting `global_pool`; `pool=token` keeps the backbone's own head. A backbone that already pools
by 'avg' is left as it is.

Swin (heekhero/DTL models/swin_transformer.py BasicLayer): the same sum restarted at every stage (its width
changes), one fusion conv per stage; a stage that ends before M gets no maps (the released Swin builds a fusion
conv for every stage, unused before M, and counts them); the block indices are global (the released Swin-B scripts read from block
4 and add after blocks 14-23, r 4; those are options here, the defaults are ViT's: read 0, M = L / 2).

Weight decay: DTL's code exempts the parameters named '*.bias' (train_vit_vtab.py); of its trained tensors
(A, B, the fusion conv's weight, the head) that is the head's bias, what timm's rule exempts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SOURCE = ("r 2, beta 100, CSN read from block 0 and added after blocks 6-11 of 12: heekhero/DTL @bf6c51e "
          "train_scripts/vit/vtab/*/train_dtl.sh, all 19 tasks (also AdamW wd 0.05 on 19/19, batch 32, 100 epochs, "
          "10 warm-up, mean/std 0.5, bicubic); lr 8e-3 on 7 of 19 tasks (next 1e-3, 3e-4: 3 each); drop-path 0.1 on "
          "8 of 19 (0.2: 7, 0: 4). DTL+ (train_dtl+.sh): kernel 5 on 9 of 19 (3: 6, 4: 4)")


@dataclass
class DTLConfig:
    rank: Annotated[int, Range(min=1)] = 2  # r of each low-rank map
    beta: Annotated[float, Range(gt=0)] = 100.0  # swish's beta
    read_from: Annotated[int, Range(min=0)] = 0  # the first block whose input the CSN reads
    add_from: Annotated[Optional[int], Range(min=0)] = None  # M, the first block after which the CSN adds; none: L // 2
    fusion: Annotated[int, Range(min=0)] = 0  # DTL+'s depth-wise conv kernel; 0: DTL
    pool: Literal["avg", "token"] = "avg"  # ViT: DTL's mean of patch tokens then the final norm, or the backbone's


def swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    return x * torch.sigmoid(beta * x)


class GridConv(nn.Module):
    """DTL+'s depth-wise conv on the spatial map: tokens (B, prefix + H*W, C), prefix unchanged, or NHWC maps."""

    def __init__(self, width: int, kernel: int, grid: tuple[int, int] | None, prefix: int = 0):
        super().__init__()
        self.grid, self.prefix = grid, prefix
        self.conv = nn.Conv2d(width, width, kernel, padding="same", groups=width, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.grid is None:  # (B, H, W, C)
            return self.conv(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        (h, w), p = self.grid, self.prefix
        b, n, c = z.shape
        if n != p + h * w:
            raise UserError(f"dtl: expected {p} prefix + {h}x{w} patch tokens, got {n} tokens "
                            "(the token grid is fixed when the method is applied)")
        patches = self.conv(z[:, p:].reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return torch.cat([z[:, :p], patches.reshape(b, h * w, c)], dim=1)


class SideNetwork(nn.Module):
    """A run of frozen blocks (timm's Sequential, kept whole) and the CSN beside it; `first` is the global index of
    the run's first block, `read_from` and `add_from` are global too."""

    def __init__(self, blocks: nn.Sequential, width: int, rank: int, beta: float, first: int, read_from: int,
                 add_from: int, fuse: nn.Module | None):
        super().__init__()
        self.blocks = blocks
        self.beta, self.first, self.read_from, self.add_from = beta, first, read_from, add_from
        last = first + len(blocks) - 1
        reads = [i for i in range(first, last + 1) if i >= read_from] if last >= add_from else []
        self.down = nn.ModuleDict({str(i): nn.Linear(width, rank, bias=False) for i in reads})  # A_i
        self.up = nn.ModuleDict({str(i): nn.Linear(rank, width, bias=False) for i in reads})  # B_i
        for up in self.up.values():
            nn.init.zeros_(up.weight)
        self.fuse = fuse if fuse is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = None
        for offset, block in enumerate(self.blocks):
            i = str(self.first + offset)
            if i in self.down:
                delta = self.up[i](self.down[i](x))
                side = delta if side is None else side + delta
            x = block(x)
            if self.first + offset >= self.add_from and side is not None:
                x = x + self.fuse(swish(side, self.beta))
        return x


class DTL(Method):
    name = "dtl"
    description = "compact side network: low-rank maps of every block's input, summed, added back from block L/2 on"
    paper = "DTL (Fu, Zhu & Wu, AAAI 2024, arXiv 2312.07856), heekhero/DTL"
    Config = DTLConfig
    families = ("vit", "swin")
    recipe = "noah"  # AdamW, 100 epochs, 10 warm-up, cosine, drop-path 0.1; departures below
    train_defaults = {"lr": 0.008, "weight_decay": 0.05, "batch_size": 32}
    backbone_defaults = {"mean": "backbone", "std": "backbone"}  # DTL's create_transform: mean = std = 0.5
    decay_rule = "timm"  # see the module docstring
    defaults_source = SOURCE

    def _stages(self, model) -> list[tuple[nn.Sequential, int, int]]:
        """(blocks container, its first global index, width) per run of blocks that shares one container."""
        runs: list[tuple[nn.Sequential, int, int]] = []
        for i, block in enumerate(anatomy(model, self.name).blocks):
            if not runs or runs[-1][0] is not block.container:
                runs.append((block.container, i, block.dim))
        return runs

    def _add_from(self, depth: int) -> int:
        return depth // 2 if self.config.add_from is None else self.config.add_from

    def check_fit(self, model):
        cfg, arch = self.config, anatomy(model, self.name)
        refuse_above(self, "option 'rank'", cfg.rank, min(b.dim for b in arch.blocks), "the width of the blocks")
        refuse_above(self, "option 'add_from'", self._add_from(arch.depth), arch.depth - 1,
                     f"the last block's index ({arch.depth} blocks)")
        refuse_above(self, "option 'read_from'", cfg.read_from, self._add_from(arch.depth),
                     "add_from (the CSN must read a block before it adds)")

    def apply(self, model):
        cfg, arch = self.config, anatomy(model, self.name)
        add_from = self._add_from(arch.depth)
        grid = None
        if arch.family == "vit":
            grid = tuple(s // p for s, p in zip(arch.input_size, arch.patch_size))
        for container, first, width in self._stages(model):
            if not isinstance(container, nn.Sequential):
                raise UserError(f"{self.name}: blocks {first}.. are not held in an nn.Sequential")
            fuse = GridConv(width, cfg.fusion, grid, arch.num_prefix_tokens) if cfg.fusion else None
            side = SideNetwork(container, width, cfg.rank, cfg.beta, first, cfg.read_from, add_from, fuse)
            if not side.down:  # a Swin stage that ends before add_from: its sum would never be added
                continue
            replace_module(model, container, side)
        if arch.family == "vit" and cfg.pool == "avg" and model.global_pool == "token":
            model.fc_norm, model.norm = model.norm, nn.Identity()
            model.global_pool = "avg"
        return model
