"""Method by method: what each one adds and trains, closed-form counts (the shared contract: test_contract.py)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from tests.conftest import assert_one_line_error, petlbench_cli

NUM_CLASSES = 5


def build(spec, method_spec: str):
    return build_model(spec, parse_method_spec(method_spec), NUM_CLASSES, seed=0)


def test_linear_trains_only_the_head(tiny_spec):
    model, counts, _ = build(tiny_spec, "linear")
    assert counts.trainable_excl_head == 0 and counts.added == 0
    assert counts.trainable == counts.head == (48 + 1) * NUM_CLASSES


def test_bitfit_trains_every_bias_and_nothing_else(tiny_spec):
    model, counts, _ = build(tiny_spec, "bitfit")
    head = model.get_classifier()
    biases = {id(m.bias) for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)}
    for p in model.parameters():
        expected = id(p) in biases or any(p is q for q in head.parameters())
        assert p.requires_grad == expected
    assert counts.trainable_excl_head > 0


def test_full_trains_everything(tiny_spec):
    model, counts, _ = build(tiny_spec, "full")
    assert all(p.requires_grad for p in model.parameters())
    assert counts.trainable == counts.total == counts.backbone + counts.head


def test_adapter_placement_and_size(tiny_spec):
    d, r, depth = 48, 4, 2
    per_adapter = d * r + r + r * d + d
    for placement, per_block in (("mlp", 1), ("attn", 1), ("both", 2)):
        _, counts, _ = build(tiny_spec, f"adapter:bottleneck={r}:placement={placement}")
        assert counts.added == counts.trainable_excl_head == depth * per_block * per_adapter


def test_adapter_zero_init_starts_as_identity(tiny_spec):
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = build(tiny_spec, "linear")
    adapted, _, _ = build(tiny_spec, "adapter:init=zeros")
    plain.eval(), adapted.eval()
    torch.testing.assert_close(adapted(x), plain(x))


@pytest.mark.parametrize("name,depth_factor", [("vpt_shallow", 1), ("vpt_deep", 2)])
def test_prompt_counts_and_sequence_restored(tiny_spec, name, depth_factor):
    model, counts, _ = build(tiny_spec, f"{name}:tokens=3")
    assert counts.added == counts.trainable_excl_head == depth_factor * 3 * 48
    assert model.num_prefix_tokens == 1, "timm's prefix count is never changed"
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 1 + 16, 48), "prompts are stripped before the final norm"


def test_vpt_shallow_class_token_ignores_prompt_position(tiny_spec):
    """Prompts carry no position embedding, so attention cannot tell where they sit (VPT paper)."""
    model, _, _ = build(tiny_spec, "vpt_shallow:tokens=4")
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    insert = model.blocks[0][0]
    strip = model.blocks[-1][-1]
    cls_after_class_token = model(x)
    insert.position = strip.position = 1 + 16  # after the last patch token instead
    cls_at_end = model(x)
    insert.position = strip.position = 1 + 7  # in the middle of the patch tokens
    cls_in_middle = model(x)
    torch.testing.assert_close(cls_after_class_token, cls_at_end, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls_after_class_token, cls_in_middle, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # control: the prompts do matter to the class token, only their place does not
        insert.prompts.add_(torch.randn_like(insert.prompts))
    assert (model(x) - cls_in_middle).abs().max() > 1e-3


def test_vpt_deep_replaces_prompts_in_every_block(tiny_spec):
    """Changing block 1's prompts changes the output; the prompt outputs of block 0 never reach block 1."""
    model, _, _ = build(tiny_spec, "vpt_deep:tokens=2:dropout=0.0")
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    seen = []
    model.blocks[1][1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    out = model(x)
    prompts1 = model.blocks[1][0].prompts
    assert torch.equal(seen[0][:, 1:3], prompts1.expand(2, -1, -1)), "block 1 sees its own prompts"
    with torch.no_grad():
        prompts1.add_(torch.randn_like(prompts1))  # a constant shift would vanish in LayerNorm
    assert not torch.allclose(model(x), out)


def test_closed_form_counts_on_vit_base():
    """The figures papers quote for ViT-B/16 with 100 classes, through `petlbench params`."""
    result = petlbench_cli("params", "--backbone", "vit_base_patch16_224", "--num-classes", "100", "--methods",
                           "linear,bitfit,vpt_shallow:tokens=50,vpt_deep:tokens=50,full,adapter", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = {r["method"].split(":")[0]: r for r in json.loads(result.stdout)}
    expected = {"linear": 76_900, "bitfit": 179_812, "vpt_shallow": 115_300, "vpt_deep": 537_700,
                "full": 85_875_556, "adapter": 76_900 + 156_768}
    assert {m: rows[m]["trainable"] for m in expected} == expected
    assert rows["vpt_shallow"]["trainable_excl_head"] == 50 * 768
    assert rows["vpt_deep"]["trainable_excl_head"] == 12 * 50 * 768
    assert all(r["head"] == 769 * 100 and r["backbone"] == 85_798_656 for r in rows.values())
    assert rows["full"]["total"] == 85_875_556


def test_unsupported_pair_is_refused_before_any_run():
    proc = petlbench_cli("params", "--backbone", "resnet18", "--num-classes", "3", "--methods", "linear,vpt_deep")
    assert_one_line_error(proc, "vpt_deep", "supports vit", "resnet18 is a resnet backbone")
