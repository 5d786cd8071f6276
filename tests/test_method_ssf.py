"""SSF: where the scales sit, their init, the ViT-B/16 count against the paper, and the exact fold into the
backbone's own weights (merged logits equal, state dict of a plain timm model)."""
from __future__ import annotations

import pytest
import timm
import torch

from petlbench.backbone import BackboneSpec
from petlbench.methods.ssf import ScaleShift
from petlbench.params import build_model
from petlbench.plan import backbone_for, departures
from petlbench.recipes import RECIPES
from petlbench.registry import parse_method_spec
from petlbench.weights import same_architecture
from tests.families import TINY, tiny

# VTAB-1k's 19 tasks: classes per task (SSF's 0.24M counts the heads too, averaged over the tasks)
VTAB_CLASSES = [100, 102, 47, 102, 37, 10, 397, 2, 10, 45, 5, 8, 6, 6, 4, 16, 16, 18, 9]


def build(spec, method="ssf", num_classes=5):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def scaled_paths(model) -> set[str]:
    return {name.removesuffix(".scale") for name, _ in model.named_parameters() if name.endswith(".scale")}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def vit_b16():
    return build(BackboneSpec("vit_base_patch16_224", pretrained=False), num_classes=100)


def test_vit_b16_count_is_the_papers(vit_b16):
    _, counts, _ = vit_b16
    d, depth = 768, 12
    per_block = d + 3 * d + d + d + 4 * d + d  # norm1, qkv, proj, norm2, fc1, fc2
    expected = 2 * (d + depth * per_block + d)  # patch embedding, blocks, final norm; scale and shift
    assert counts.trainable_excl_head == counts.added == expected == 205_824
    mean_head = (d + 1) * sum(VTAB_CLASSES) / len(VTAB_CLASSES)
    assert round((expected + mean_head) / 1e6, 2) == 0.24  # the paper's VTAB-1k figure counts the head


def test_init_is_ssfs_normal(vit_b16):
    model, _, _ = vit_b16
    wrapped = [m for m in model.modules() if isinstance(m, ScaleShift)]
    scale = torch.cat([m.scale.detach() for m in wrapped])
    shift = torch.cat([m.shift.detach() for m in wrapped])
    assert abs(scale.mean() - 1) < 1e-3 and abs(scale.std() - 0.02) < 1e-3
    assert abs(shift.mean()) < 1e-3 and abs(shift.std() - 0.02) < 1e-3


def test_placement_as_ssfs_code():
    vit, _, _ = build(tiny("vit"))
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    assert scaled_paths(vit) == {"patch_embed.proj", "norm"} | {f"blocks.{i}.{p}" for i in range(2) for p in per_block}
    swin, _, _ = build(tiny("swin"))
    paths = scaled_paths(swin)
    assert {"patch_embed.proj", "patch_embed.norm", "layers.1.downsample.norm"} <= paths
    assert not any("reduction" in p for p in paths), "the bias-free patch-merging reduction gets none (as SSF)"
    assert not any(p.startswith("head.fc") for p in paths), "never the classifier"


@pytest.mark.parametrize("family", ["vit", "swin", "convnext"])
def test_unit_scale_zero_shift_is_the_frozen_model(family):
    """The wrapper itself changes nothing: with scale 1 and shift 0 the logits are the linear probe's."""
    plain, _, _ = build(tiny(family), "linear")
    model, _, _ = build(tiny(family))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ScaleShift):
                m.scale.fill_(1.0), m.shift.zero_()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))


CONVNEXT_LINEAR_MLP = BackboneSpec("convnext_atto", {**TINY["convnext"][1], "conv_mlp": False}, pretrained=False)


@pytest.mark.parametrize("spec", [tiny("vit"), tiny("swin"), tiny("convnext"), CONVNEXT_LINEAR_MLP],
                         ids=["vit", "swin", "convnext", "convnext-linear-mlp"])
def test_merge_folds_into_a_plain_timm_model(spec):
    """Trained scales and shifts fold into Linear, conv and norm weights: same logits, the backbone's keys.
    The tiny ConvNeXt's first stage is 8 channels on 8x8 maps, so a wrong channel axis would not go unseen."""
    model, _, _ = build(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ScaleShift):
                m.scale.normal_(1.0, 0.3), m.shift.normal_(0.0, 0.3)
    x = torch.randn(3, 3, 32, 32)
    before = model.eval()(x)
    merged = parse_method_spec("ssf").merge(model)
    plain = timm.create_model(spec.name, pretrained=False, num_classes=5, **spec.args)
    assert same_architecture(merged, plain) is None
    assert not any(isinstance(m, ScaleShift) for m in merged.modules())
    assert relative_error(merged(x), before) < 1e-5
    plain.load_state_dict(merged.state_dict())  # strict
    assert relative_error(plain.eval()(x), before) < 1e-5


def test_recipe_is_ssfs_released_scripts():
    ssf, noah = parse_method_spec("ssf"), RECIPES["noah"]
    train = {**noah.train, **departures(ssf, noah)}  # SSF: AdamW, 2 GPUs x 32, 100 epochs, 10 warm-up
    assert (train["optimizer"], train["lr"], train["weight_decay"], train["batch_size"], train["epochs"],
            train["warmup_epochs"]) == ("adamw", 0.005, 5e-5, 64, 100, 10)
    assert backbone_for(BackboneSpec("vit_base_patch16_224"), noah, ssf).args["drop_path_rate"] == 0.0


def test_inputs_are_normalised_with_the_checkpoints_own_mean_and_std():
    """SSF's train.py takes mean/std from its checkpoint's config (resolve_data_config): 0.5 for the in21k ViT
    it loads, not ImageNet's (issue 17, fault 4)."""
    from pathlib import Path
    from petlbench.plan import plan_one, resolve_backbone
    from petlbench.suite import load_suite
    suite = load_suite("vtab1k")
    spec = resolve_backbone(suite, Path("/nonexistent"), "vit_base_patch16_224.augreg_in21k", None, None, True)
    run = plan_one(suite, suite.tasks[0], parse_method_spec("ssf"), spec, 0, {}, None, suite.protocol("final"),
                   Path("/nonexistent"))
    prep = run.preprocessing()
    assert (prep["mean"], prep["std"]) == ([0.5] * 3, [0.5] * 3)
    assert run.config()["backbone"]["mean"] is None, "the weights' own, whatever they are"
    swin = backbone_for(BackboneSpec("swin_base_patch4_window7_224"), RECIPES["noah"], parse_method_spec("ssf"))
    assert swin.mean is None and swin.std is None
