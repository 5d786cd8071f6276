"""SNELL: the kernelised merge in closed form, the competition-based sparsification against the released quantile
rule (exact count, survivors K * |K|, gradients scaled by magnitude), what trains and what stays bit-identical, the
ViT-B/16 count by formula, and the exact merge into a plain timm model."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from torch.nn import functional as F

from petlbench.backbone import BackboneSpec
from petlbench.engine.train import make_optimizer
from petlbench.errors import UserError
from petlbench.methods.snell import KernelUpdate, SparselyTuned, compete, kernel_merge
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.weights import same_architecture
from tests.families import tiny


def build(spec, method="snell", num_classes=5):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def trained_looking(model, scale=20.0):
    """Updates as after training: A and B larger, so the kernel (and the competition) shape dW."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, KernelUpdate):
                m.a.mul_(scale), m.b.mul_(scale)


def test_kernel_is_a_signed_sum_of_euclidean_distances():
    a = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]])  # (H 2, in 3, 2)
    b = torch.tensor([[[0.0, 1.0], [4.0, 0.0]], [[1.0, 0.0], [0.0, 3.0]]])  # (H 2, out 2, 2)
    expected = torch.tensor([[0.1 * (math.dist(a[0, i], b[0, j]) - math.dist(a[1, i], b[1, j])) for j in range(2)]
                             for i in range(3)])
    assert expected[0, 0] == pytest.approx(0.1 * (1.0 - 1.0))  # |(0,0)-(0,1)| - |(1,1)-(1,0)|
    assert expected[1, 1] == pytest.approx(0.1 * (math.sqrt(13) - 3.0))  # |(1,2)-(4,0)| - |(0,0)-(0,3)|
    torch.testing.assert_close(kernel_merge(a, b), expected)
    update = KernelUpdate(3, 2, rank=4, sparsity=0.0)
    with torch.no_grad():
        update.a.copy_(a), update.b.copy_(b)
    x = torch.randn(5, 3)
    torch.testing.assert_close(update(x), x @ expected)  # y = x K: dW = K^T, the kernel alone at sparsity 0
    # high rank from rank-2 factors: the point of the kernel (a plain 2-column product has rank at most 2)
    big = KernelUpdate(64, 48, rank=4, sparsity=0.0)
    assert torch.linalg.matrix_rank(big.weight().double()) > 4


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.995])
def test_competition_zeroes_the_requested_fraction_as_the_released_quantile_rule(sparsity):
    torch.manual_seed(0)
    k = torch.randn(48, 192, requires_grad=True)
    n = k.numel()
    out = compete(k, sparsity)
    zeroed = int((out == 0).sum())
    assert zeroed == math.floor(sparsity * (n - 1)) + 1 and abs(zeroed - sparsity * n) <= 1
    # the released SNELL.sparsify: threshold at torch.quantile(|K|, s), survivors K * |K|
    magnitude = k.detach().abs()
    released = k.detach() * F.threshold(magnitude, float(torch.quantile(magnitude.flatten(), sparsity)), 0)
    assert torch.equal(out.detach(), released)
    kept = out != 0
    assert torch.equal(magnitude[kept].min() > magnitude[~kept].max(), torch.tensor(True)), "the largest survive"
    # competition: the gradient of a survivor is the upstream gradient times its own magnitude; zeroed get none
    out.sum().backward()
    assert torch.equal(k.grad, torch.where(kept, magnitude, torch.zeros_like(magnitude)))


def test_sparsity_is_per_matrix_on_the_fused_qkv():
    model, _, _ = build(tiny("vit"), "snell:sparsity=0.75:rank=8")
    trained_looking(model)
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, SparselyTuned) and len(qkv.updates) == 3
    for update in qkv.updates:  # q, k, v each 48 x 48, each with its own 75%
        assert int((update.weight() == 0).sum()) == math.floor(0.75 * (48 * 48 - 1)) + 1


def test_what_trains_and_one_step_leaves_the_frozen_weights_bit_identical():
    model, counts, _ = build(tiny("vit"))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    per_block = {f"{layer}.updates.{i}.{ab}" for layer, parts in (("attn.qkv", 3), ("attn.proj", 1), ("mlp.fc1", 1),
                                                                  ("mlp.fc2", 1)) for i in range(parts) for ab in "ab"}
    assert trained == {f"blocks.{b}.{p}" for b in range(2) for p in per_block} | {"cls_token", "head.weight",
                                                                                  "head.bias"}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    moving = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    make_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.01)).step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items()), "frozen weights bit-identical"
    assert all(not torch.equal(after[n], v) for n, v in moving.items()), "every update moved"
    no_token, _, _ = build(tiny("vit"), "snell:cls_token=false")
    assert not no_token.cls_token.requires_grad


def test_vit_b16_count_by_formula():
    """The paper reports no count (App. E.1); the released freeze_stages prints this sum (updates + cls_token)."""
    _, counts, _ = build(BackboneSpec("vit_base_patch16_224", pretrained=False), "snell:rank=8", num_classes=100)
    d, mlp, blocks, r = 768, 3072, 12, 8
    per_block = 4 * r * (d + d) + r * (d + mlp) + r * (mlp + d)  # q, k, v, proj; fc1; fc2: r (in + out) each
    assert counts.added == blocks * per_block == 165_888 * r == 1_327_104
    assert counts.trainable_excl_head == counts.added + d  # the class token
    assert 165_888 * 32 + d == 5_309_184  # the default rank 32


def test_recompute_gives_the_same_outputs_and_gradients():
    grads = []
    for recompute in ("true", "false"):
        model, _, _ = build(tiny("vit"), f"snell:sparsity=0.5:dropout=0:drop_path=0:recompute={recompute}")
        trained_looking(model)
        torch.manual_seed(1)
        out = model.train()(torch.randn(2, 3, 32, 32))
        out.square().sum().backward()
        grads.append((out.detach(), model.blocks[1].mlp.fc1.updates[0].a.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("family", ["vit", "swin", "convnext"])
@pytest.mark.parametrize("method", ["snell:rank=8", "snell:rank=4:sparsity=0.9"])
def test_merge_folds_into_a_plain_timm_model(family, method):
    spec = tiny(family)
    model, _, _ = build(spec, method)
    trained_looking(model)
    x = torch.randn(3, 3, 32, 32)
    before = model.eval()(x)
    assert (before - build(spec, "linear")[0].eval()(x)).abs().max() > 1e-3, "the updates change the model"
    merged = parse_method_spec(method).merge(model)
    assert not any(isinstance(m, (SparselyTuned, KernelUpdate)) for m in merged.modules())
    plain = timm.create_model(spec.name, pretrained=False, num_classes=5, **spec.args)
    assert same_architecture(merged, plain) is None
    plain.load_state_dict(merged.state_dict())  # strict
    assert (plain.eval()(x) - before).abs().max() < 1e-5


def test_odd_rank_and_out_of_range_sparsity_are_refused():
    with pytest.raises(UserError, match="rank"):
        build(tiny("vit"), "snell:rank=5")
    with pytest.raises(UserError, match="sparsity"):
        parse_method_spec("snell:sparsity=1")
    with pytest.raises(UserError):
        build(tiny("resnet"))  # no Linears to adapt: a family it does not support
