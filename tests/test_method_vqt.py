"""VQT: the frozen features stay bit-identical, the query path is the block's own computation, the head
reads every layer, and the counts on ViT-B/16 are VQT's."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from tests.families import tiny

NUM_CLASSES = 5
DIM, DEPTH = 48, 2  # tests.families' tiny ViT


def build(spec, method: str):
    return build_model(spec, parse_method_spec(method), NUM_CLASSES, seed=0)


def with_layer_scale() -> BackboneSpec:
    spec = tiny("vit")
    return BackboneSpec(spec.name, {**spec.args, "init_values": 0.3}, pretrained=False)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_queries_leave_the_backbone_features_bit_identical(mode):
    plain, _, _ = build(tiny("vit"), "linear")
    vqt, _, _ = build(tiny("vit"), "vqt:tokens=3")
    x = torch.randn(2, 3, 32, 32)
    getattr(plain, mode)(), getattr(vqt, mode)()
    assert torch.equal(vqt.forward_features(x), plain.forward_features(x))


def test_no_gradient_path_through_the_backbone_tokens():
    """VQT's memory saving: only the queries' path is in the graph; the backbone's features need no backward."""
    model, _, _ = build(tiny("vit"), "vqt")
    x = torch.randn(2, 3, 32, 32)
    assert not model.forward_features(x).requires_grad
    assert model(x).requires_grad


@pytest.mark.parametrize("spec", [tiny("vit"), with_layer_scale()], ids=["plain", "layer_scale"])
def test_query_output_is_the_block_run_on_a_query_that_only_the_query_sees(spec):
    """timm's own block on [tokens; query], masked so tokens ignore the query and the query ignores itself,
    gives the same output at the query position as VQT's query path."""
    model, _, _ = build(spec, "vqt:tokens=2")
    model.eval()
    wrapper = model.blocks[1]
    frozen = wrapper.block
    x = torch.randn(2, 5, DIM)
    queries = wrapper.queries.expand(2, -1, -1)
    n, t = x.shape[1], queries.shape[1]
    mask = torch.zeros(n + t, n + t)
    mask[:, n:] = float("-inf")  # nobody attends to a query, queries included
    ref = frozen(torch.cat([x, queries], dim=1), attn_mask=mask)[:, n:]
    torch.testing.assert_close(wrapper.query_outputs(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options,per_layer", [("tokens=1", DIM), ("tokens=3", 3 * DIM), ("tokens=3:pool=mean", DIM)])
def test_head_reads_the_pooled_feature_and_every_layer(options, per_layer):
    model, counts, _ = build(tiny("vit"), f"vqt:{options}")
    head = model.get_classifier()
    assert head.fc.in_features == DIM + DEPTH * per_layer
    assert counts.head == (DIM + DEPTH * per_layer + 1) * NUM_CLASSES
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, NUM_CLASSES)


def test_head_input_is_l2_normalised_per_layer():
    model, _, _ = build(tiny("vit"), "vqt:tokens=2")
    model.eval()
    seen = {}
    model.get_classifier().fc.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model(torch.randn(2, 3, 32, 32))
    parts = seen["x"].split([DIM, 2 * DIM, 2 * DIM], dim=-1)
    for part in parts:
        torch.testing.assert_close(part.norm(dim=-1), torch.ones(2))


def test_head_refuses_to_run_without_this_forwards_queries():
    model, _, _ = build(tiny("vit"), "vqt")
    model.eval()
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    model.forward_head(features)  # the slots this forward filled
    with pytest.raises(RuntimeError, match="query outputs"):
        model.forward_head(features)  # emptied: never a stale tensor of an earlier forward


def test_training_moves_the_queries_and_the_head_only():
    model, _, _ = build(tiny("vit"), "vqt")
    queries = [model.blocks[i].queries for i in range(DEPTH)]
    before = [q.detach().clone() for q in queries]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    optimizer.step()
    assert all(not torch.equal(q, b) for q, b in zip(queries, before))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.queries" for i in range(DEPTH)} | {"head.fc.weight", "head.fc.bias"}


def test_vit_b16_counts():
    """12 x T x 768 query parameters; the head widens to (1 + 12 T) x 768 inputs. VQT's VTAB-1k default T = 1."""
    spec = BackboneSpec("vit_base_patch16_224", pretrained=False)
    for tokens in (1, 10):
        _, counts, _ = build_model(spec, parse_method_spec(f"vqt:tokens={tokens}"), 100, seed=0)
        assert counts.trainable_excl_head == 12 * tokens * 768  # 9,216 at T = 1
        assert counts.head == (1 + 12 * tokens) * 768 * 100 + 100


def test_refuses_a_model_without_a_linear_head():
    model, _, _ = build(tiny("vit"), "linear")
    model.reset_classifier(0)
    assert anatomy(model).depth == DEPTH
    with pytest.raises(UserError, match="linear classifier"):
        parse_method_spec("vqt").apply(model)


@pytest.mark.parametrize("classes", [5, 100])
def test_head_starts_as_vqts(classes):
    """VQT's head (src/models/mlp.py, special_bias): weights Kaiming-normal with fan-out, std sqrt(2 / classes);
    every bias -log((1 - 0.01) / 0.01) = -log 99, whatever the number of classes."""
    model, _, _ = build_model(tiny("vit"), parse_method_spec("vqt:tokens=4"), classes, seed=0)
    fc = model.get_classifier().fc
    assert torch.equal(fc.bias, torch.full((classes,), -math.log(99)))
    expected = math.sqrt(2 / classes)  # fan-out of a (classes, inputs) weight is `classes`
    assert abs(fc.weight.std().item() / expected - 1) < 0.05
    assert abs(fc.weight.mean().item()) < 0.05 * expected
