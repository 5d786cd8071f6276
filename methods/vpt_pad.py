"""VPT on ConvNets (Jia et al., ECCV 2022, "prompt-pad"): a learned border of pixels around the input image.

As in KMnP/vpt (src/models/resnet.py, `_setup_prompt_pad`, also used for ConvNeXt): the image keeps its
size and the border is added around it, so a 224 input becomes 224 + 2p; the stem and everything after it
are frozen. The border is two strips, top/bottom (3, 2p, W + 2p) and left/right (3, H, 2p), stored in
pixel units (uniform in [0, 1] at init) and normalised with ImageNet mean/std on the way in, like the
images: 12 p (S + p) parameters for an S x S input (13,740 at p = 5, S = 224).

The strips are sized for the backbone's input size; an image of another size (tiny test models) gets
the strips resized to fit (bilinear), which VPT never needed.

Weight decay: VPT's rule (KMnP/vpt src/solver/optimizer.py, SGD: every trained tensor but the head's
bias).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import Range
from petlbench.recipes import IMAGENET_MEAN, IMAGENET_STD, WEIGHT_DECAYS

SOURCE = ("5 pixels, uniform [0, 1] init normalised with ImageNet mean/std: KMnP/vpt (src/configs/config.py "
          "MODEL.PROMPT.NUM_TOKENS = 5, INITIATION 'random'; src/models/resnet.py _setup_prompt_pad); base lr 1.0, "
          "wd 1e-3: the vpt recipe's prompt default, inside VPT's ConvNet prompt grid (tune_vtab.py 'prompt_resnet': "
          "lr {5, 2.5, 1, 0.5, 0.25, 0.1, 0.05, 0.025, 0.01} x wd {0.01, 1e-3, 1e-4, 0}); VPT published no "
          "per-task ConvNet values")


@dataclass
class VPTPadConfig:
    pixels: Annotated[int, Range(min=1)] = 5  # border width p on each side
    init: Literal["random", "gaussian"] = "random"  # VPT's two: uniform pixels normalised, or N(0, 1) as is


class PaddedStem(nn.Module):
    """Surround the image with the learned border, then run the frozen stem."""

    def __init__(self, stem: nn.Module, pixels: int, size: tuple[int, int], init: str):
        super().__init__()
        self.stem = stem
        self.pixels = pixels
        h, w = size
        self.top_bottom = nn.Parameter(torch.empty(1, 3, 2 * pixels, w + 2 * pixels))
        self.left_right = nn.Parameter(torch.empty(1, 3, h, 2 * pixels))
        self.normalise = init == "random"
        for strip in (self.top_bottom, self.left_right):
            if self.normalise:
                nn.init.uniform_(strip, 0.0, 1.0)
            else:
                nn.init.normal_(strip)

    def strip(self, strip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.normalise:
            mean, std = strip.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1), strip.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            strip = (strip - mean) / std
        if tuple(strip.shape[-2:]) != size:
            strip = F.interpolate(strip, size=size, mode="bilinear", align_corners=False)
        return strip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.pixels
        sides = self.strip(self.left_right, (h, 2 * p)).to(x.dtype).expand(b, -1, -1, -1)
        caps = self.strip(self.top_bottom, (2 * p, w + 2 * p)).to(x.dtype).expand(b, -1, -1, -1)
        x = torch.cat([sides[..., :p], x, sides[..., p:]], dim=-1)
        x = torch.cat([caps[..., :p, :], x, caps[..., p:, :]], dim=-2)
        return self.stem(x)


class VPTPad(Method):
    name = "vpt_pad"
    description = "learned pixels padded around the input image of a ConvNet (VPT's prompt-pad)"
    paper = "VPT (Jia et al., ECCV 2022), its ConvNet variant; KMnP/vpt"
    Config = VPTPadConfig
    families = ("resnet", "convnext")  # VPT's ConvNet experiments: ResNet-50 and ConvNeXt
    recipe = "vpt"
    decay_rule = "vpt"  # see the module docstring
    tune_grid = {"lr": [5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05, 0.025, 0.01], "weight_decay": WEIGHT_DECAYS}
    defaults_source = SOURCE

    def check_fit(self, model):
        fixed = anatomy(model, self.name).extra.get("fixed_input")
        if fixed:
            raise UserError(f"method {self.name}: the backbone takes its input size only ({fixed}); a padded border "
                            "would grow the image")
        refuse_above(self, "option 'pixels'", self.config.pixels, min(anatomy(model, self.name).input_size),
                     "the side of the backbone's input (a border wider than the image)")

    def apply(self, model):
        body = anatomy(model, self.name)
        replace_module(model, body.embed, PaddedStem(body.embed, self.config.pixels, body.input_size,
                                                     self.config.init))
        return model
