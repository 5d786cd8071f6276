"""E^2VPT: the count in closed form (depth x dim x (tokens + kv_tokens), K and V shared), the attention's
formula by hand, the replica of timm's attention at no prompts, the ablations (no key-value prompts is VPT-deep,
no prompts at all is the backbone), the frozen backbone after a step, and the released defaults."""
from __future__ import annotations

import math

import pytest
import torch
from timm.models.vision_transformer import Attention

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.e2vpt import KVPromptAttention, make_kv_prompts
from petlbench.params import build_model, count_params
from petlbench.plan import departures
from petlbench.prompts import InsertPrompts
from petlbench.recipes import RECIPES
from petlbench.registry import parse_method_spec
from tests.families import tiny


def build(method="e2vpt", num_classes=5):
    return build_model(tiny("vit"), parse_method_spec(method), num_classes, seed=0)


def prompt_tensors(model):
    """The visual and key-value prompt tensors, found by the modules that hold them."""
    visual = [m.prompts for m in model.modules() if isinstance(m, InsertPrompts)]
    kv = [p for m in model.modules() if isinstance(m, KVPromptAttention) for p in (m.keys, m.values) if p is not None]
    return visual, kv


@pytest.mark.parametrize("share, per_layer", [(True, 10 + 5), (False, 10 + 2 * 5)])
def test_vit_b16_count_is_depth_dim_times_prompts(share, per_layer):
    """Visual prompts (tokens, dim) and key-value prompts (heads, kv_tokens, dim / heads) per layer."""
    counts = count_params(BackboneSpec("vit_base_patch16_224", pretrained=False),
                          parse_method_spec(f"e2vpt:share_kv={share}"), 100)
    assert counts.trainable_excl_head == 12 * 768 * per_layer  # 138,240 shared, 184,320 not
    caltech = count_params(BackboneSpec("vit_base_patch16_224", pretrained=False),
                           parse_method_spec("e2vpt:tokens=32:kv_tokens=5"), 102)  # E2VPT's Caltech101 command
    assert caltech.trainable_excl_head == 12 * 768 * (32 + 5) == 340_992


def test_trainable_set_is_the_prompts_and_the_head():
    model, _, _ = build()
    visual, kv = prompt_tensors(model)
    assert [tuple(p.shape) for p in visual] == [(1, 10, 48)] * 2
    assert [tuple(p.shape) for p in kv] == [(3, 5, 16)] * 2  # heads x kv_tokens x head_dim, one per block
    expected = {id(p) for p in [*visual, *kv, *model.get_classifier().parameters()]}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected


def test_the_attention_is_the_formula_by_hand():
    torch.manual_seed(0)
    attn = Attention(12, num_heads=2, qkv_bias=True).eval()
    keys, values = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    x = torch.randn(2, 4, 12)
    for shared in (True, False):
        layer = KVPromptAttention(attn, torch.nn.Parameter(keys), None if shared else torch.nn.Parameter(values))
        q, k, v = attn.qkv(x).reshape(2, 4, 3, 2, 6).permute(2, 0, 3, 1, 4)
        pv = keys if shared else values
        k, v = torch.cat([keys.expand(2, -1, -1, -1), k], 2), torch.cat([pv.expand(2, -1, -1, -1), v], 2)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(6), dim=-1)  # 4 queries over 3 + 4 keys
        expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 4, 12))
        torch.testing.assert_close(layer.eval()(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_without_prompts_the_attention_is_timms(fused):
    torch.manual_seed(0)
    attn = Attention(12, num_heads=2, qkv_bias=True).eval()
    attn.fused_attn = fused
    layer = KVPromptAttention(attn, torch.nn.Parameter(torch.empty(2, 0, 6)), None).eval()
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(layer(x), attn(x), rtol=1e-5, atol=1e-6)


def test_without_prompts_the_model_is_the_backbone():
    ablated, _, _ = build("e2vpt:tokens=0:kv_tokens=0")
    linear, _, _ = build("linear")  # same seed: same backbone and head
    assert not any(isinstance(m, (InsertPrompts, KVPromptAttention)) for m in ablated.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ablated.eval()(x), linear.eval()(x), rtol=0, atol=0)


def test_without_key_value_prompts_it_is_vpt_deep():
    ablated, _, _ = build("e2vpt:kv_tokens=0:tokens=4")
    deep, _, _ = build("vpt_deep:tokens=4")  # same seed: the same prompts drawn in the same order
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ablated.eval()(x), deep.eval()(x), rtol=0, atol=0)
    plain, _, _ = build("e2vpt:tokens=4")
    assert (plain.eval()(x) - deep.eval()(x)).abs().max() > 1e-4, "the key-value prompts change the logits"


def test_a_step_moves_the_prompts_and_leaves_the_backbone_bit_identical():
    model, _, _ = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.5, momentum=0.9, weight_decay=1e-3)
    loss = torch.nn.functional.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    ids = {id(p) for p in trained}
    for n, p in model.named_parameters():
        if id(p) in ids:
            assert not torch.equal(p, before[n]), f"{n} trains but did not move"
        else:
            assert torch.equal(p, before[n]) and p.grad is None, f"frozen {n} changed"


def test_key_value_init_is_e2vpts_kaiming_uniform():
    torch.manual_seed(0)
    prompts = make_kv_prompts(12, 5, 64, "kaiming", (16, 16))
    bound = math.sqrt(2.0) * math.sqrt(3.0 / (5 * 64))  # gain sqrt(2), fan-in kv_tokens x head_dim
    assert prompts.shape == (12, 5, 64) and prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    xavier = make_kv_prompts(12, 5, 64, "xavier", (16, 16))
    assert xavier.abs().max() <= math.sqrt(6.0 / (3 * 256 + 16))


def test_defaults_are_the_released_commands():
    e2vpt, vpt = parse_method_spec("e2vpt"), RECIPES["vpt"]
    cfg = e2vpt.config
    assert (cfg.tokens, cfg.kv_tokens, cfg.share_kv, cfg.kv_init, cfg.dropout, cfg.kv_dropout, cfg.init) == \
        (10, 5, True, "kaiming", 0.1, 0.0, "xavier")
    train = {**vpt.train, **departures(e2vpt, vpt)}
    assert (train["optimizer"], train["batch_size"], train["weight_decay"], train["epochs"], train["decay_rule"]) == \
        ("sgd", 64, 0.001, 100, "vpt")
    assert train["lr"] * train["batch_size"] / train["lr_scale_batch"] == pytest.approx(0.01)  # SOLVER.BASE_LR


def test_a_non_vit_is_refused():
    with pytest.raises(UserError, match="e2vpt"):
        build_model(tiny("resnet"), parse_method_spec("e2vpt"), 5, seed=0)
