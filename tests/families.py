"""Tiny timm models of every backbone family (random weights, 32x32 input), for contract tests."""
from __future__ import annotations

from petlbench.backbone import BackboneSpec
from petlbench.backbones import ALL_FAMILIES

TINY = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 4, "window_size": 2, "embed_dim": 24,
                                              "depths": (1, 1), "num_heads": (1, 2)}),
    "convnext": ("convnext_atto", {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "ls_init_value": 1.0}),
    "resnet": ("resnet18", {"layers": [1, 1, 1, 1], "zero_init_last": False}),  # else the last BN scale is 0
}
assert set(TINY) == set(ALL_FAMILIES)


# a tiny CLIP (petlbench/clip_configs/tiny.json): its image tower is a timm ViT, its text tower open_clip's
CLIP_FAMILY = "clip"


def tiny(family: str) -> BackboneSpec:
    if family == CLIP_FAMILY:
        return BackboneSpec("clip:tiny", {}, pretrained=False)
    name, args = TINY[family]
    return BackboneSpec(name, dict(args), pretrained=False)
