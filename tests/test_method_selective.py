"""Selective tuning (PETL_Vision): exactly the named parts of the named blocks train, found through the anatomy;
closed-form counts on ViT-B/16; the model is unchanged at start; refusals name the option."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.engine.train import make_optimizer
from petlbench.errors import UserError
from petlbench.params import build_model, count_params
from petlbench.plan import method_label
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from tests.families import tiny

NUM_CLASSES = 5
VIT_B = BackboneSpec("vit_base_patch16_224", pretrained=False)
D = 768
QKV, PROJ, FC = D * 3 * D + 3 * D, D * D + D, D * 4 * D + 4 * D  # fc1 and fc2 weights are the same size
NORMS = 2 * 2 * D


def build(spec, method: str):
    return build_model(spec, parse_method_spec(method), NUM_CLASSES, seed=0)


@pytest.mark.parametrize("method, per_block", [
    ("selective", QKV),  # the default: PETL_Vision README's selective attention tuning, qkv of blocks 9, 10, 11
    ("selective:part=proj", PROJ),
    ("selective:part=attn", QKV + PROJ),
    ("selective:part=fc1", D * 4 * D + 4 * D),
    ("selective:part=fc2", 4 * D * D + D),
    ("selective:part=mlp", 8 * D * D + 5 * D),
    ("selective:part=block", QKV + PROJ + 8 * D * D + 5 * D + NORMS),  # 7,087,872: one ViT-B block
    ("selective:part=qkv+fc2", QKV + 4 * D * D + D),
])
def test_vit_b16_counts_in_closed_form(method, per_block):
    counts = count_params(VIT_B, parse_method_spec(method), 100)
    assert counts.trainable_excl_head == 3 * per_block and counts.added == 0
    assert counts.head == 100 * D + 100


def test_one_block_is_seven_million():
    counts = count_params(VIT_B, parse_method_spec("selective:part=block:blocks=11"), 100)
    assert counts.trainable_excl_head == 7_087_872  # the same block Partial-1 trains, without the final norm


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("parts, blocks", [("qkv", "-1"), ("proj+fc1", "0"), ("mlp", "0+1"), ("attn+block", "-2")])
def test_exactly_the_named_parts_train(family, parts, blocks):
    model, counts, _ = build(tiny(family), f"selective:part={parts}:blocks={blocks}")
    body = anatomy(model)
    depth = body.depth
    chosen = {int(b) % depth for b in blocks.split("+")}
    modules = {"qkv": lambda b: [b.qkv], "proj": lambda b: [b.attn_proj], "attn": lambda b: [b.attn],
               "fc1": lambda b: [b.fc1], "fc2": lambda b: [b.fc2], "mlp": lambda b: [b.mlp],
               "block": lambda b: [b.module]}
    expected = {id(p) for i in chosen for part in parts.split("+") for m in modules[part](body.blocks[i])
                for p in m.parameters()}
    expected |= {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert counts.added == 0 and counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_starts_as_the_frozen_model_and_merges_to_itself():
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = build(tiny("vit"), "linear")
    method = parse_method_spec("selective:part=block:blocks=-1")
    model, _, _ = build_model(tiny("vit"), method, NUM_CLASSES, seed=0)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=0, atol=0)
    assert method.merge(model) is model


@pytest.mark.parametrize("method", ["selective:part=fc2+proj:blocks=0", "selective:part=block:blocks=1"])
def test_frozen_set_bit_identical_after_a_step(method):
    model, _, task_keys = build(tiny("vit"), method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    make_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-3, decay_rule="all")).step()
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value) == (key not in trainable), key
    assert trainable <= set(task_keys)


def test_blocks_count_from_the_end_and_label_round_trips():
    method = parse_method_spec("selective:part=mlp:blocks=-1")  # one number is a list of one
    assert method.config.blocks == [-1] and method.indices(12) == [11]
    assert parse_method_spec("selective:blocks=9+10+11").indices(12) == parse_method_spec("selective").indices(12)
    label = method_label(parse_method_spec("selective:part=qkv+mlp:blocks=0+1"))
    assert label == "selective:part=qkv+mlp:blocks=0+1"
    assert parse_method_spec(label).config == parse_method_spec("selective:part=qkv+mlp:blocks=0+1").config


@pytest.mark.parametrize("spec, needles", [
    ("selective:blocks=2", ["option 'blocks' has 2", "2 blocks"]),
    ("selective:blocks=-3", ["option 'blocks' has -3"]),
    ("selective:blocks=1+-1", ["block 1 twice"]),
])
def test_blocks_outside_the_backbone_are_refused_in_one_line(spec, needles):
    with pytest.raises(UserError) as err:
        build(tiny("vit"), spec)
    assert "\n" not in str(err.value) and all(n in str(err.value) for n in needles)


def test_an_unknown_part_is_refused():
    with pytest.raises(UserError, match="must be one of qkv|proj|attn"):
        parse_method_spec("selective:part=norm")
