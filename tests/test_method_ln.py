"""LN-Tune: exactly the norm layers train (nothing added, nothing changes at init), PETL_Vision's ViT-B/16
count, and BatchNorms tune as norm tuning does: their statistics follow in training."""
from __future__ import annotations

import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.params import FrozenStatsBatchNorm2d, build_model
from petlbench.registry import parse_method_spec
from tests.families import tiny

NUM_CLASSES = 5


def build(spec, method="ln", num_classes=NUM_CLASSES):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def test_vit_b16_count_is_petl_visions():
    _, counts, _ = build(BackboneSpec("vit_base_patch16_224", pretrained=False), num_classes=100)
    assert counts.trainable_excl_head == 2 * 768 * (2 * 12 + 1) == 38_400  # PETL_Vision: inserted_parameters 38400
    assert counts.added == 0


def test_trains_exactly_the_norms_and_starts_as_the_frozen_model():
    for family in ("vit", "swin", "convnext", "resnet"):
        model, _, _ = build(tiny(family))
        norms = {id(p) for m in anatomy(model).norm_layers(model) for p in m.parameters()}
        head = {id(p) for p in model.get_classifier().parameters()}
        assert norms, family
        for p in model.parameters():
            assert p.requires_grad == (id(p) in norms | head), family
    convnext, _, _ = build(tiny("convnext"))
    assert all(p.requires_grad for p in convnext.head.norm.parameters()), "the norm after pooling is the backbone's"
    plain, _, _ = build(tiny("vit"), "linear")
    tuned, _, _ = build(tiny("vit"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tuned.eval()(x), plain.eval()(x), rtol=0, atol=0)


def test_batchnorm_statistics_follow_when_its_scale_trains():
    model, _, task_keys = build(tiny("resnet"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(isinstance(m, FrozenStatsBatchNorm2d) for m in bns)
    assert "bn1.running_mean" in task_keys and "layer4.0.bn2.running_var" in task_keys, "statistics are the task's"
    before = model.bn1.running_mean.clone()
    model.train()(torch.randn(4, 3, 32, 32))
    assert not torch.equal(model.bn1.running_mean, before)
    linear, _, _ = build(tiny("resnet"), "linear")  # the frozen backbone's statistics stay put
    before = linear.bn1.running_mean.clone()
    linear.train()(torch.randn(4, 3, 32, 32))
    assert torch.equal(linear.bn1.running_mean, before)


def test_merge_is_the_model_itself():
    model, _, _ = build(tiny("vit"))
    keys = set(model.state_dict())
    assert parse_method_spec("ln").merge(model) is model and set(model.state_dict()) == keys
