"""Tiny timm models of every backbone family (random weights, 32x32 input), for contract tests."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

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
# a tiny CLIP with a ResNet image tower (petlbench/clip_configs/tiny-rn.json): a timm ResNet ending in CLIP's
# attention pool (petlbench.clip_resnet)
CLIP_RN_FAMILY = "clip_rn"
CLIP_FAMILIES = {CLIP_FAMILY: "vit", CLIP_RN_FAMILY: "resnet"}  # -> the family the anatomy reads the image tower as


def tiny(family: str) -> BackboneSpec:
    if family == CLIP_FAMILY:
        return BackboneSpec("clip:tiny", {}, pretrained=False)
    if family == CLIP_RN_FAMILY:
        return BackboneSpec("clip:tiny-rn", {}, checkpoint=str(tiny_clip_rn_weights()), pretrained=False)
    name, args = TINY[family]
    return BackboneSpec(name, dict(args), pretrained=False)


@functools.cache
def tiny_clip_rn_weights() -> Path:
    """open_clip's random tiny CLIP-RN with its blocks' last BatchNorm scales at 1, saved once per test process:
    open_clip zero-initialises them (as timm's zero_init_last), which leaves the other norms of a block without a
    gradient (tiny("resnet") turns it off for the same reason)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from petlbench.clip import CONFIG_DIR
    open_clip.add_model_config(CONFIG_DIR)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("tiny-rn", pretrained=None)
    state = {k: torch.ones_like(v) if k.endswith("bn3.weight") and k.startswith("visual.layer") else v.contiguous()
             for k, v in model.state_dict().items()}
    path = Path(tempfile.mkdtemp(prefix="petlbench-tiny-rn-")) / "tiny-rn.safetensors"
    save_file(state, str(path))
    return path
