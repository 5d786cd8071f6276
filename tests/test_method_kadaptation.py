"""KAdaptation through LoKr: starts as the frozen model, its count on ViT-B/16 beside the paper code's, the update of
q and v is (alpha / r) A (x) u v^T and k's is none, q's and v's biases train, the weight dropout acts in training
only, and the merge is the plain timm model."""
from __future__ import annotations

import copy

import peft
import pytest
import timm
import torch

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from petlbench.weights import same_architecture
from tests.conftest import TINY_ARGS
from tests.families import TINY, tiny

NUM_CLASSES = 5
D = 48  # the tiny ViT's width
FITS = "kadaptation:factor=6"  # the default factor 32 divides no tiny width (ViT 48, Swin 24): refused on them


def build(method, spec=None, num_classes=NUM_CLASSES):
    return build_model(spec or tiny("vit"), parse_method_spec(method), num_classes, seed=0)


def moved(model, std=0.1):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn_like(p))
    return model


def test_starts_as_the_frozen_model():
    plain, _, _ = build("linear")
    model, _, _ = build(FITS)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))


def test_vit_b16_count_beside_the_papers():
    _, counts, _ = build("kadaptation", BackboneSpec("vit_base_patch16_224", pretrained=False), 100)
    n, fast = 32, 768 // 32
    ours = 12 * 2 * (n * n + 2 * fast + 768)  # per q and v: A, u and v of u v^T, the bias
    papers = 12 * (2 * n * 2 * fast + 768) + 2 * 2 * n * n  # PEViT model.py: 32 rank-1 B_i for q and v, b; shared A_i
    assert counts.trainable_excl_head == ours == 44_160
    assert papers == 79_699 - 29_523 == 50_176  # PEViT README: KAdaptation's trainable count less linear probing's


def test_q_and_v_move_by_a_kronecker_product_and_k_not_at_all():
    plain, _, _ = build("linear")
    model = moved(build("kadaptation:factor=6:alpha=2.0")[0])
    merged = parse_method_spec("kadaptation").merge(copy.deepcopy(model))
    for i in range(2):
        attn = model.blocks[i].attn.qkv
        delta = merged.blocks[i].attn.qkv.weight - plain.blocks[i].attn.qkv.weight
        for rows, layer in ((slice(0, D), attn.q), (slice(2 * D, 3 * D), attn.v)):
            a = layer.lokr_w1["default"]
            assert a.shape == (6, 6)  # the slow weight A: factor x factor
            fast = layer.lokr_w2_a["default"] @ layer.lokr_w2_b["default"]  # u v^T, 8 x 8, rank 1
            torch.testing.assert_close(delta[rows], 2.0 * torch.kron(a, fast).detach())
        assert not delta[D:2 * D].any(), "k is not adapted"


def test_q_and_v_biases_train_and_k_bias_does_not():
    model, _, _ = build(FITS)
    qkv = model.blocks[0].attn.qkv
    assert qkv.q.get_base_layer().bias.requires_grad and qkv.v.get_base_layer().bias.requires_grad
    assert not qkv.k.bias.requires_grad
    _, with_bias, _ = build(FITS)
    _, without, _ = build(FITS + ":bias=false")
    assert with_bias.trainable_excl_head - without.trainable_excl_head == 2 * 2 * D


def test_bias_needs_biases():
    no_bias = BackboneSpec("vit_tiny_patch16_224", {**TINY_ARGS, "qkv_bias": False}, pretrained=False)
    with pytest.raises(UserError, match="bias=false"):
        build(FITS, no_bias)
    assert build(FITS + ":bias=false", no_bias)[1].trainable_excl_head > 0


def test_weight_dropout_acts_in_training_only():
    model = moved(build(FITS)[0])
    q = model.blocks[0].attn.qkv.q
    assert isinstance(q, peft.tuners.lokr.LoKrLayer)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        q.train()
        assert not torch.equal(q(x), q(x)), "rows of the update are dropped at random in training"
        q.eval()
        assert torch.equal(q(x), q(x))
        quiet = moved(build(FITS + ":dropout=0")[0]).blocks[0].attn.qkv.q.train()
        assert torch.equal(quiet(x), quiet(x))


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_merge_is_the_plain_timm_model_with_the_same_logits(family):
    model = moved(build_model(tiny(family), parse_method_spec(FITS), NUM_CLASSES, seed=0)[0])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
        merged = parse_method_spec("kadaptation").merge(model)
        name, args = TINY[family]
        plain = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **args)
        assert same_architecture(merged, plain) is None
        plain.load_state_dict(merged.state_dict())
        torch.testing.assert_close(plain.eval()(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["kadaptation:factor=0", "kadaptation:rank=0", "kadaptation:dropout=1",
                                 "kadaptation:alpha=-1", "kadaptation:targets=qkv"])
def test_bad_options_are_one_line(bad):
    with pytest.raises(UserError) as err:
        parse_method_spec(bad)
    assert "\n" not in str(err.value)
