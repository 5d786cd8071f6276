"""CLIP's ResNet image towers (RN50, RN101, RN50x4, ...) as timm ResNets with the same weights.

open_clip's `ModifiedResNet` is a ResNet-D that timm's `ResNet` builds exactly: the 3-conv stem ends in a 2x2
average pool (timm: `stem_type="deep"` with an AvgPool2d anti-aliasing layer), each strided Bottleneck averages
after its 3x3 conv (timm's `aa_layer`), and the shortcut pools before its 1x1 conv (`avg_down`). Only the pooling
differs: CLIP's attention pool takes timm's global pool's place, so the pooled feature is already CLIP's image
embedding (its `c_proj` is the visual projection) and the text heads see it through an identity projection. The
anatomy then reads the tower as family "resnet": the ResNet methods run on it, and the methods that need a ViT's
token sequence are refused at planning.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from petlbench.errors import UserError
from petlbench.textheads import ZeroShotHead


class ClipResNet(ResNet):
    """timm's ResNet ending in CLIP's attention pool; the classifier is `head` (as timm's ViT names it, where the
    text methods put theirs). A zero-shot head of the right size survives `reset_classifier` (built from class
    names, no random draw); any other is replaced by a fresh linear layer on the pooled embedding."""

    def __init__(self, attnpool: nn.Module, **kwargs):
        super().__init__(num_classes=0, **kwargs)
        del self.fc
        self.global_pool = attnpool
        self.num_features = self.head_hidden_size = attnpool.c_proj.out_features
        self.head = nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        if isinstance(self.head, ZeroShotHead) and self.head.num_classes == num_classes:
            return
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    # As ClipVisionTransformer (petlbench.clip): a second image tower (`model.side`, CoMo's DINO) sees the input
    # image, and its features join the pooled embedding as the head's input.
    def forward_features(self, x: torch.Tensor):
        maps = super().forward_features(x)
        side = getattr(self, "side", None)
        return maps if side is None else (maps, side(x))

    def forward_head(self, x, pre_logits: bool = False):
        maps, side = x if isinstance(x, tuple) else (x, None)
        pooled = self.global_pool(maps)  # CLIP's attention pool: the image embedding
        if self.drop_rate:  # timm's `drop_rate`, before the classifier
            pooled = nn.functional.dropout(pooled, p=float(self.drop_rate), training=self.training)
        if side is not None:
            pooled = torch.cat([pooled, side.to(pooled.dtype)], dim=-1)
        return pooled if pre_logits else self.head(pooled)


def is_modified_resnet(visual: nn.Module) -> bool:
    from open_clip.modified_resnet import ModifiedResNet
    return isinstance(visual, ModifiedResNet)


def resnet_tower(visual: nn.Module, name: str, timm_args: dict[str, Any] | None = None) -> ClipResNet:
    """open_clip's ModifiedResNet as a ClipResNet holding the same tensors (its attention pool is the very module)."""
    from open_clip.transform import PreprocessCfg
    width = visual.conv3.out_channels
    layers = [len(getattr(visual, f"layer{i}")) for i in (1, 2, 3, 4)]
    try:
        model = ClipResNet(visual.attnpool, block=Bottleneck, layers=layers, channels=tuple(width * 2 ** i
                                                                                           for i in range(4)),
                           stem_type="deep", stem_width=width // 2, avg_down=True, aa_layer=nn.AvgPool2d,
                           **(timm_args or {}))
    except TypeError as exc:
        raise UserError(f"--backbone-args: timm's ResNet cannot take {sorted(timm_args or {})} "
                        f"({str(exc).splitlines()[0][:120]})") from None
    state = timm_state(visual.state_dict())
    meta = visual.conv1.weight.is_meta
    missing, unexpected = model.load_state_dict(state, strict=False, assign=meta)
    if unexpected or [k for k in missing if not k.startswith("global_pool.")]:
        raise UserError(f"backbone {name!r}: its ResNet tower does not map onto timm's ResNet "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    prep = getattr(visual, "preprocess_cfg", None) or dataclasses.asdict(PreprocessCfg())  # defaults: OpenAI's
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {},
                                mean=tuple(prep["mean"]), std=tuple(prep["std"]),
                                interpolation=prep.get("interpolation", "bicubic"),
                                input_size=(3, size, size), crop_pct=1.0)
    return model


STEM = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4", "conv3": "conv1.6", "bn3": "bn1"}


def timm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ModifiedResNet's state dict under timm's ResNet names: the stem's convs sit in timm's `conv1` Sequential
    (its last norm is `bn1`), a shortcut's conv and norm follow timm's pool at `downsample.1`/`.2`. The attention
    pool is not renamed: ClipResNet holds the module itself."""
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in STEM:
            out[f"{STEM[head]}.{rest}"] = value
        elif head.startswith("layer"):
            parts = key.split(".")
            if parts[2] == "downsample":
                parts[3] = str(int(parts[3]) + 1)
            out[".".join(parts)] = value
    return out
