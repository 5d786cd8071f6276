"""SSF (Lian et al., NeurIPS 2022): a learned per-channel scale and shift after every linear, convolution and
norm layer of the frozen backbone; after training both fold into that layer's own weight and bias.

Placement as dongzelian/SSF (models/vision_transformer.py, swin_transformer.py, convnext.py): ViT after the
patch embedding, norm1, qkv, attention proj, norm2, fc1, fc2 and the final norm, 2 x (768 + 12 x 8448 + 768)
= 205,824 parameters on ViT-B/16; Swin also after its patch-embedding and patch-merging norms; ConvNeXt after
every conv and norm. Layers without a bias get none, as SSF leaves Swin's bias-free patch-merging reduction
alone: a shift there could not fold into the backbone. One departure: on ConvNeXt SSF scales the last stage's
output before pooling; here the head's norm after pooling is scaled, so that it folds too.

Weight decay: timm's rule: SSF trains through its copy of timm's create_optimizer_v2 (train.py,
optim_factory.py: no decay on 1-d tensors, biases and no_weight_decay()), so its scales and shifts are never
decayed; only the head's weight is.
"""
from __future__ import annotations

import torch
from torch import nn

from petlbench.backbones import anatomy
from petlbench.backbones.layers import channel_axis
from petlbench.method import Method


class ScaleShift(nn.Module):
    """layer(x) * scale + shift, per channel of the layer's output; SSF's init: scale N(1, 0.02), shift N(0, 0.02)."""

    def __init__(self, layer: nn.Module, axis: int):
        super().__init__()
        channels = layer.bias.shape[0]
        self.layer = layer
        self.axis = axis
        self.scale = nn.Parameter(torch.empty(channels))
        self.shift = nn.Parameter(torch.empty(channels))
        nn.init.normal_(self.scale, mean=1.0, std=0.02)
        nn.init.normal_(self.shift, mean=0.0, std=0.02)

    def forward(self, x):
        y = self.layer(x)
        shape = [1] * y.dim()
        shape[self.axis] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """The layer with scale and shift folded in: weight' = scale * weight (per output channel),
        bias' = scale * bias + shift. Linear, conv and norm layers alike."""
        weight, bias = self.layer.weight, self.layer.bias
        if weight is not None:
            weight.mul_(self.scale.view(-1, *[1] * (weight.dim() - 1)).to(weight.dtype))
        bias.mul_(self.scale.to(bias.dtype)).add_(self.shift.to(bias.dtype))
        return self.layer


def _has_bias(layer: nn.Module) -> bool:
    bias = getattr(layer, "bias", None)
    return isinstance(bias, nn.Parameter) and bias.dim() == 1


def scaled_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) for every linear, conv and norm layer with a bias, the classifier excluded."""
    head = set(map(id, model.get_classifier().modules()))
    norms = set(map(id, anatomy(model, SSF.name).norm_layers(model)))
    found = []
    for parent in model.modules():
        if id(parent) in head:
            continue
        for name, child in parent.named_children():
            kind = isinstance(child, (nn.Linear, nn.Conv2d)) or id(child) in norms
            if kind and id(child) not in head and _has_bias(child):
                found.append((parent, name, child))
    return found


class SSF(Method):
    name = "ssf"
    description = "learned per-channel scale and shift after every linear, conv and norm layer (folds into them)"
    paper = "SSF (Lian et al., NeurIPS 2022)"
    families = ("vit", "swin", "convnext")  # ResNet convs have no bias to fold a shift into; SSF has no ResNet
    recipe = "noah"  # AdamW, batch 64 (2 GPUs x 32), 100 epochs, 10 warm-up, cosine: NOAH's recipe
    decay_rule = "timm"  # see the module docstring
    train_defaults = {"lr": 0.005, "weight_decay": 5e-5}
    # the weights' own mean/std: SSF's code normalises with its checkpoint's (0.5 for the in21k ViT), not ImageNet's
    backbone_defaults = {"drop_path_rate": 0.0, "mean": "backbone", "std": "backbone"}
    defaults_source = ("lr 5e-3 (10 of 19 tasks), wd 5e-5 (14 of 19), drop-path 0 (9 of 19), AdamW, 2 GPUs x "
                       "batch 32, 100 epochs, 10 warm-up: dongzelian/SSF train_scripts/vit/vtab/*/train_ssf.sh; init "
                       "scale N(1, 0.02), shift N(0, 0.02): models/vision_transformer.py init_ssf_scale_shift; the "
                       "checkpoint's own mean/std: train.py resolve_data_config (0.5 for its in21k ViT)")

    def apply(self, model):
        for parent, name, layer in scaled_layers(model):
            setattr(parent, name, ScaleShift(layer, channel_axis(layer)))
        return model

    def merge(self, model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, ScaleShift):
                    setattr(parent, name, child.fold())
        return model
