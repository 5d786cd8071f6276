"""Conv-Adapter (Chen et al., CVPR-W 2024, arXiv 2208.07463): a small conv bottleneck beside each ConvNet block.

The adapter is the official "design 2" (Hhhhhhao/Conv-Adapter, models/tuning_modules/conv_adapter.py): a
k x k grouped conv from C_in to C_in / compression channels (one group per output channel, so each sees
`compression` inputs), an activation (ReLU in ResNets, GELU in ConvNeXt), a 1 x 1 conv to C_out, and a
learned per-channel scale that starts at 1. Its convs start like the backbone's own (ResNet: Kaiming
normal, fan-out; ConvNeXt: truncated normal, std 0.02; biases zero), so the adapter is active from the
first step: the paper's init is not the identity.

placement "conv" (convolution-parallel, the paper's default): beside the block's k x k conv, reading its
input, with its kernel, stride, padding and dilation. Where its output is added follows the released code:
- ResNet (models/backbones/resnet.py Bottleneck): after that conv's norm and ReLU, relu(bn2(conv2(h))) +
  adapter(h), before conv3. The conv, its norm and its activation move into one wrapper; timm's DropBlock
  (off unless `drop_block_rate` is set) then acts on the sum. Basic blocks (ResNet-18/34) follow the same rule
  on their k x k conv1: the released BasicBlock reads its adapter's input before assigning it, so it never ran.
- ConvNeXt (models/backbones/convnext.py): to the depth-wise conv's output, before the block's norm; and beside
  each of the three downsampling convs between stages (2 x 2, stride 2, C_in -> C_out, the same design),
  added to that conv's output. On ConvNeXt-B this is the released 2,324,672 (2,231,376 in the blocks, 93,296
  at the downsamplings), the head excluded.
"block" (residual-parallel): beside the whole block, from its input to its output; on ConvNeXt the
downsampling adapters are added as well (no block holds those convs).
Checked against the released modules on the same random weights: ResNet-50 logits equal (max abs diff 0),
ConvNeXt-B 8.9e-7.

Weight decay: timm's rule: Conv-Adapter trains through timm's create_optimizer_v2 (main.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range

SOURCE = ("compression 8 (hidden = C_in / 8), per-channel scale 1, ReLU/GELU: Hhhhhhao/Conv-Adapter (main.py "
          "--adapt_size default 8; models/tuning_modules/conv_adapter.py; models/backbones/resnet.py, convnext.py); "
          "AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, cosine, no warm-up: main.py defaults, AdamW for conv_adapt "
          "(utils.py auto_load_optim_param)")


@dataclass
class ConvAdapterConfig:
    compression: Annotated[int, Range(min=1)] = 8  # the paper's gamma: hidden channels = C_in / compression
    placement: Literal["conv", "block"] = "conv"  # beside the block's k x k conv, or beside the whole block


class ConvAdapterBranch(nn.Module):
    """scale * up(act(grouped k x k conv down(x))): C_in -> C_in / compression -> C_out."""

    def __init__(self, in_ch: int, out_ch: int, compression: int, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int] | str, dilation: tuple[int, int], act: type[nn.Module], init: str):
        super().__init__()
        hidden = max(1, in_ch // compression)
        self.down = nn.Conv2d(in_ch, hidden, kernel, stride, padding, dilation, groups=math.gcd(in_ch, hidden))
        self.act = act()
        self.up = nn.Conv2d(hidden, out_ch, 1)
        self.scale = nn.Parameter(torch.ones(1, out_ch, 1, 1))
        for conv in (self.down, self.up):
            if init == "kaiming":
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x))) * self.scale


class Parallel(nn.Module):
    """The frozen module and the adapter side by side on the same input, outputs summed."""

    def __init__(self, frozen: nn.Module, adapter: ConvAdapterBranch):
        super().__init__()
        self.frozen = frozen
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(x) + self.adapter(x)


class AfterActivation(nn.Module):
    """act(norm(conv(x))) + adapter(x): a ResNet block's k x k conv with its norm and activation, and the adapter
    added after them (the released Bottleneck)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module, act: nn.Module, adapter: ConvAdapterBranch):
        super().__init__()
        self.conv, self.norm, self.act = conv, norm, act
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x))) + self.adapter(x)


def branch_beside(conv: nn.Conv2d, compression: int, act: type[nn.Module], init: str) -> ConvAdapterBranch:
    """An adapter with the conv's channels, kernel, stride, padding and dilation."""
    return ConvAdapterBranch(conv.in_channels, conv.out_channels, compression, conv.kernel_size, conv.stride,
                             conv.padding, conv.dilation, act, init)


def downsampling_convs(body) -> list[nn.Conv2d]:
    """ConvNeXt: the strided conv that opens each stage after the first (the anatomy's `downsamples`)."""
    return [m for s in sorted(body.downsamples) for m in body.downsamples[s].modules() if isinstance(m, nn.Conv2d)]


class ConvAdapter(Method):
    name = "conv_adapter"
    description = "grouped-conv bottleneck with a per-channel scale beside each block's k x k conv (or block)"
    paper = "Conv-Adapter (Chen et al., CVPR-W 2024, arXiv 2208.07463), Hhhhhhao/Conv-Adapter"
    Config = ConvAdapterConfig
    families = ("resnet", "convnext")  # needs each block's convolutions (the anatomy's `convs`)
    recipe = "noah"  # Conv-Adapter's own recipe is AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, cosine
    decay_rule = "timm"  # see the module docstring
    train_defaults = {"warmup_epochs": 0}
    backbone_defaults = {"drop_path_rate": 0.0}  # Conv-Adapter trains without stochastic depth (main.py)
    defaults_source = SOURCE

    def check_fit(self, model):
        """A compression above the channels it reads would silently be a 1-channel bottleneck."""
        body = anatomy(model, self.name)
        if self.config.placement == "conv":
            reads = [c.in_channels for b in body.blocks for c in b.convs if max(c.kernel_size) > 1]
        else:
            reads = [b.in_dim for b in body.blocks]
        if body.family == "convnext":
            reads += [c.in_channels for c in downsampling_convs(body)]
        if reads:
            refuse_above(self, "option 'compression'", self.config.compression, min(reads),
                         "the fewest input channels it adapts")

    def apply(self, model):
        cfg = self.config
        body = anatomy(model, self.name)
        act, init = (nn.ReLU, "kaiming") if body.family == "resnet" else (nn.GELU, "trunc_normal")
        for block in body.blocks:
            spatial = [i for i, c in enumerate(block.convs) if max(c.kernel_size) > 1]
            if not spatial:
                raise UserError(f"{self.name}: block {block.stage}.{block.key} has no k x k convolution")
            k = spatial[0]  # ResNet bottleneck: conv2; basic block: conv1; ConvNeXt: the depth-wise conv
            conv = block.convs[k]
            if cfg.placement == "block":
                adapter = ConvAdapterBranch(block.in_dim, block.dim, cfg.compression, conv.kernel_size, conv.stride,
                                            conv.padding, conv.dilation, act, init)
                block.replace(Parallel(block.module, adapter))
            elif body.family == "resnet":  # after the conv's norm and ReLU, as the released Bottleneck
                norm, relu = block.norms[k], block.acts[k]
                for moved in (norm, relu):
                    replace_module(block.module, moved, nn.Identity())
                replace_module(block.module, conv,
                               AfterActivation(conv, norm, relu, branch_beside(conv, cfg.compression, act, init)))
            else:
                replace_module(block.module, conv, Parallel(conv, branch_beside(conv, cfg.compression, act, init)))
        for conv in downsampling_convs(body) if body.family == "convnext" else ():
            replace_module(model, conv, Parallel(conv, branch_beside(conv, cfg.compression, act, init)))
        return model
