"""LoRA through peft: starts as the frozen model, 0.29M on ViT-B/16, adapts q and v but never k, exactly LoRA's
matrices train, the record names the targets, the timm API survives, the merge is a plain timm model."""
from __future__ import annotations

import copy

import peft
import pytest
import timm
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.backbones import family_of
from petlbench.errors import UserError
from petlbench.options import as_dict
from petlbench.params import build_model
from petlbench.plan import method_label
from petlbench.qkv import SplitQKV
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.engine.train import make_optimizer
from petlbench.weights import same_architecture
from tests.families import TINY, tiny

NUM_CLASSES = 5


def build(spec, method, num_classes=NUM_CLASSES):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def train_steps(model, steps=3):
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.0))
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def effective_qkv(model) -> list[torch.Tensor]:
    """Each block's fused qkv weight with LoRA folded in (on a copy)."""
    merged = parse_method_spec("lora").merge(copy.deepcopy(model))
    return [blk.attn.qkv.weight.detach() for blk in merged.blocks]


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_starts_as_the_frozen_model(family):
    plain, _, _ = build(tiny(family), "linear")
    model, _, _ = build(tiny(family), "lora")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))


def test_vit_b16_count_is_the_tables_029m():
    _, counts, _ = build(BackboneSpec("vit_base_patch16_224", pretrained=False), "lora", 100)
    assert counts.trainable_excl_head == counts.added == 12 * 2 * 8 * (768 + 768) == 294_912
    assert round(counts.trainable_excl_head / 1e6, 2) == 0.29  # NOAH's LoRA row


def test_only_loras_matrices_train():
    model, counts, _ = build(tiny("vit"), "lora:rank=3")
    layers = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(layers) == 2 * 2  # q and v of two blocks
    lora_params = {id(p) for layer in layers for p in (*layer.lora_A.parameters(), *layer.lora_B.parameters())}
    trainable = {id(p) for p in model.parameters() if p.requires_grad} - {id(p) for p in model.head.parameters()}
    assert trainable == lora_params
    assert counts.trainable_excl_head == 2 * 2 * 3 * (48 + 48)
    assert all(not layer.lora_B["default"].weight.detach().any() for layer in layers), "B starts at zero"


def test_adapts_q_and_v_but_never_k():
    model, _, _ = build(tiny("vit"), "lora")
    before = effective_qkv(model)
    train_steps(model)
    after = effective_qkv(model)
    d = 48
    for w0, w1 in zip(before, after):
        assert torch.equal(w0[d:2 * d], w1[d:2 * d]), "k rows unchanged"
        assert not torch.equal(w0[:d], w1[:d]) and not torch.equal(w0[2 * d:], w1[2 * d:]), "q and v rows moved"


def test_other_targets_follow_the_option():
    model, counts, _ = build(tiny("vit"), "lora:rank=2:targets=o+fc1+fc2")
    assert not any(isinstance(m, SplitQKV) for m in model.modules()), "qkv is split only for q, k or v"
    assert counts.trainable_excl_head == 2 * 2 * ((48 + 48) + (48 + 192) + (192 + 48))
    assert isinstance(model.blocks[0].mlp.fc2, peft.tuners.lora.LoraLayer)


def test_record_and_label_name_the_targets():
    default, custom = parse_method_spec("lora"), parse_method_spec("lora:targets=q+k+v:rank=4")
    assert as_dict(default.config)["targets"] == ["q", "v"] and default.config.alpha == 8.0
    assert as_dict(custom.config)["targets"] == ["q", "k", "v"]  # what the record's method options hold
    assert method_label(default) == "lora" and method_label(custom) == "lora:rank=4:targets=q+k+v"


def test_the_timm_model_keeps_its_api():
    model, _, _ = build(tiny("vit"), "lora")
    assert family_of(model) == "vit" and model.get_classifier() is model.head
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 1 + 16, 48)
    assert model.forward_head(features).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("family,targets", [("vit", "q+v"), ("swin", "q+v"), ("vit", "q+k+v+o+fc1+fc2")])
def test_merge_is_the_plain_timm_model_with_the_same_logits(family, targets):
    model, _, _ = build(tiny(family), f"lora:targets={targets}")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(3, 3, 32, 32)
    before = model.eval()(x)
    merged = parse_method_spec(f"lora:targets={targets}").merge(model)
    name, args = TINY[family]
    plain = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **args)
    assert same_architecture(merged, plain) is None
    plain.load_state_dict(merged.state_dict())
    torch.testing.assert_close(plain.eval()(x), before, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in merged.modules())


@pytest.mark.parametrize("bad", ["lora:rank=0", "lora:alpha=0", "lora:dropout=1", "lora:targets=q+x", "lora:r=8"])
def test_bad_options_are_one_line(bad):
    with pytest.raises(UserError) as err:
        parse_method_spec(bad)
    assert "\n" not in str(err.value)


def test_a_model_without_a_fused_qkv_is_refused():
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=NUM_CLASSES)
    with pytest.raises(UserError, match="qkv"):
        parse_method_spec("lora").apply(model)
