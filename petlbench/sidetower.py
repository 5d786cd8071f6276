"""A second, frozen image model beside a CLIP backbone's image tower (`ClipVisionTransformer.side`, petlbench.clip):
CoMo's DINO. It sees the same input image; its pooled features join CLIP's pooled token as the head's input, so the
runner's closed-form hooks and its feature cache hand a head both (`feature_identity` keeps their cache entries
apart from the plain backbone's). Built through petlbench.backbone like every backbone: a timm name, timm's
architecture arguments, weights from a local file, timm's hub, or random.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import timm.data
import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbone import BackboneSpec, check_model_name, create_backbone, file_sha256
from petlbench.errors import UserError
from petlbench.options import parse_pairs


class SideTower(nn.Module):
    """The frozen model's pooled features of the input image. The image arrives normalised with CLIP's mean and std;
    `renormalise` (CLIP's and the model's own mean/std) re-expresses it for a model trained on another
    normalisation; `size` resizes it (bicubic) for a model built for another input size."""

    def __init__(self, model: nn.Module, renormalise: tuple[tuple, tuple, tuple, tuple] | None = None,
                 size: tuple[int, int] | None = None, identity: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.renormalise = renormalise  # (clip mean, clip std, own mean, own std), each three floats
        self.size = tuple(size) if size else None
        self.out_features = model.num_features
        self.identity = identity or {}  # what its features depend on: part of the feature cache's key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise is not None:
            clip_mean, clip_std, mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                                              for v in self.renormalise)
            x = (x * clip_std + clip_mean - mean) / std
        if self.size and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False)
        return self.model(x)


def side_tower(name: str, args: list[str], checkpoint: str | None, pretrained: bool, own_normalisation: bool,
               clip_model: nn.Module, where: str = "side tower") -> SideTower:
    """timm's `name` with `args` ("key=value" items), frozen, in eval mode; weights from a local `checkpoint` (timm's
    state dict), timm's hub (`pretrained`) or random. Planning's meta-device build fetches and reads nothing."""
    meta = next(clip_model.parameters()).is_meta
    where = f"{where}: {name}"
    try:
        check_model_name(name)
        spec = BackboneSpec(name, parse_pairs("+".join(args), "+", f"{where}: its args"),
                            checkpoint=None if meta else checkpoint_file(checkpoint, where),
                            pretrained=pretrained and not meta)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    try:
        model = create_backbone(spec, num_classes=0)
    except UserError as exc:
        if spec.pretrained and not spec.checkpoint and builds(dataclasses.replace(spec, pretrained=False)):
            raise UserError(f"{where}: could not fetch timm's weights for it; give a local file of timm's state "
                            "dict for it, or random weights") from None
        raise UserError(f"{where}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    own = timm.data.resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or tuple(own["input_size"][1:])
    renormalise = None
    if own_normalisation:
        clip_cfg = clip_model.pretrained_cfg  # petlbench.clip sets CLIP's own mean and std there
        renormalise = tuple(tuple(float(v) for v in t)
                            for t in (clip_cfg["mean"], clip_cfg["std"], own["mean"], own["std"]))
    weights = (f"checkpoint sha256:{file_sha256(Path(checkpoint).expanduser())[:16]}" if spec.checkpoint
               else "timm-pretrained" if spec.pretrained else "random-init")
    identity = {"name": name, "args": spec.args, "weights": weights, "renormalise": renormalise, "size": list(size)}
    return SideTower(model, renormalise, tuple(size), identity)


def checkpoint_file(checkpoint: str | None, where: str = "side tower") -> str | None:
    """Local weights named as given, refused in one line when the file is not there."""
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise UserError(f"{where}: checkpoint {checkpoint}: no such file")
    return checkpoint


def builds(spec: BackboneSpec) -> bool:
    """Whether timm builds the spec's architecture (on the meta device: nothing fetched, no memory)."""
    try:
        with torch.device("meta"):
            create_backbone(spec, num_classes=0)
        return True
    except UserError:
        return False


def feature_identity(model: nn.Module) -> dict[str, Any]:
    """The side tower's part of a feature-cache key ({} without one): its features are part of the head's input."""
    side = getattr(model, "side", None)
    return {"side": side.identity} if isinstance(side, SideTower) else {}
