"""Partial-k: the last k blocks and everything after them train, nothing before them (so features there can
be cached), VPT's Partial-1 count on ViT-B/16, and k beyond the depth refused."""
from __future__ import annotations

import pytest
import torch

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from tests.conftest import TINY_ARGS
from tests.families import tiny

NUM_CLASSES = 5


def build(spec, method="partial", num_classes=NUM_CLASSES):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def trainable(model) -> set[str]:
    """Names of the modules (the classifier's excepted) holding a parameter that trains."""
    head = set(map(id, model.get_classifier().modules()))
    return {name for name, m in model.named_modules()
            if id(m) not in head and any(p.requires_grad for p in m.parameters(recurse=False))}


def test_vit_b16_count_is_vpts_partial_1():
    _, counts, _ = build(BackboneSpec("vit_base_patch16_224", pretrained=False), num_classes=100)
    d = 768
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    assert counts.trainable_excl_head == block + 2 * d == 7_089_408  # last layer + encoder_norm, as VPT's code
    assert counts.added == 0


def test_last_k_blocks_and_final_norm_train_nothing_before():
    model, _, _ = build(tiny("vit"))
    owners = {".".join(n.split(".")[:2]) if n.startswith("blocks.") else n for n in trainable(model)}
    assert owners == {"blocks.1", "norm"}
    method = parse_method_spec("partial")
    assert method.first_trainable_block(model) == 1
    everything, _, _ = build(tiny("vit"), "partial:blocks=2")
    assert parse_method_spec("partial:blocks=2").first_trainable_block(everything) == 0
    assert not any(p.requires_grad for p in everything.patch_embed.parameters())
    assert not everything.cls_token.requires_grad and not everything.pos_embed.requires_grad


def test_features_before_the_first_trained_block_do_not_change():
    """What enters block `first_trainable_block` is the same whatever the trained parameters are: cacheable."""
    model, _, _ = build(tiny("vit"))
    first = parse_method_spec("partial").first_trainable_block(model)
    seen = []
    model.blocks[first].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randn(2, 3, 32, 32)
    model.eval()(x)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    out = model(x)
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    assert out.requires_grad


def test_stage_downsampling_and_head_norm_follow_the_blocks():
    swin_last, _, _ = build(tiny("swin"))
    assert not any(n.startswith("layers.1.downsample") for n in trainable(swin_last)), "before the trained block"
    swin_both, _, _ = build(tiny("swin"), "partial:blocks=2")
    assert {"layers.1.downsample.norm", "layers.1.downsample.reduction"} <= trainable(swin_both)
    assert not any(n.startswith("patch_embed") for n in trainable(swin_both))
    convnext, _, _ = build(tiny("convnext"), "partial:blocks=2")  # stage 2's last block and stage 3
    names = trainable(convnext)
    assert "head.norm" in names and any(n.startswith("stages.3.downsample") for n in names)
    assert not any(n.startswith("stages.2.downsample") for n in names)
    pooled = BackboneSpec("vit_tiny_patch16_224", {**TINY_ARGS, "global_pool": "avg", "fc_norm": True},
                          pretrained=False)
    vit_avg, _, _ = build(pooled)
    assert "fc_norm" in trainable(vit_avg)


def test_resnet_last_block_with_its_shortcut_and_statistics():
    model, _, task_keys = build(tiny("resnet"))
    names = trainable(model)
    assert names and all(n.startswith("layer4.0") for n in names) and "layer4.0.downsample.0" in names
    assert "layer4.0.bn1.running_mean" in task_keys and "layer3.0.bn1.running_mean" not in task_keys


def test_blocks_beyond_the_depth_or_below_one_are_refused():
    with pytest.raises(UserError, match="'blocks' is 3, above 2, the number of blocks"):
        build(tiny("vit"), "partial:blocks=3")
    with pytest.raises(UserError, match="blocks"):
        parse_method_spec("partial:blocks=0")
