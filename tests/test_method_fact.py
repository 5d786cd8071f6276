"""FacT: the model starts unchanged (V = 0), counts against the paper's averages, the increments are the
paper's factorisations (TT and TK), factors shared once, the exact fold into plain timm Linears, and every
factor learns once V has left zero (the contract's one-step test sees only V move on the first step)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.fact import Factored
from petlbench.params import build_model
from petlbench.plan import method_label
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.engine.train import make_optimizer
from petlbench.weights import same_architecture
from tests.conftest import TINY_ARGS
from tests.families import tiny

NUM_CLASSES = 5
# FacT/configs/{tt,tk}/*.yaml: rank per VTAB-1k task (19 tasks)
TT_RANKS = [8] * 9 + [16] * 9 + [4]
TK_RANKS = [32] * 13 + [16] * 6


def build(spec, method, num_classes=NUM_CLASSES):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def tt_count(d, depth, m, r):
    return 2 * d * r + depth * (4 + 2 * m) * r * r


def tk_count(d, depth, m, r):
    return 2 * d * r + depth * (4 + 2 * m) * r + r ** 3


def moved(model, std=0.05):
    """A 'trained' FacT: V (and every other factor) away from its init."""
    with torch.no_grad():
        for p in model.fact.parameters():
            p.add_(std * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant,rank,count,ranks,paper", [
    ("tt", 8, tt_count, TT_RANKS, 0.040), ("tk", 32, tk_count, TK_RANKS, 0.069)])
def test_vit_b16_counts_and_the_papers_averages(variant, rank, count, ranks, paper):
    _, counts, _ = build(BackboneSpec("vit_base_patch16_224", pretrained=False), f"fact:variant={variant}", 100)
    assert counts.trainable_excl_head == counts.added == count(768, 12, 4, rank)  # 21,504 (tt 8), 86,528 (tk 32)
    assert round(sum(count(768, 12, 4, r) for r in ranks) / len(ranks) / 1e6, 3) == paper  # per-task ranks


@pytest.mark.parametrize("variant,rank", [("tt", 3), ("tk", 5)])
def test_tiny_counts_follow_the_formula(variant, rank):
    _, counts, _ = build(tiny("vit"), f"fact:variant={variant}:rank={rank}")
    assert counts.trainable_excl_head == (tt_count if variant == "tt" else tk_count)(48, 2, 4, rank)


@pytest.mark.parametrize("variant", ["tt", "tk"])
def test_starts_as_the_frozen_model(variant):
    plain, _, _ = build(tiny("vit"), "linear")
    model, _, _ = build(tiny("vit"), f"fact:variant={variant}")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=0, atol=0)


def increment(layer: Factored) -> torch.Tensor:
    layer.eval()
    with torch.no_grad():
        return layer.delta(torch.eye(layer.base.in_features)).t()


def test_tt_increments_are_u_sigma_v():
    """FacT-TT: slice (block, kind) of the increment tensor is s * V Sigma U; fc1's four chunks of output rows
    use the four r-row bands of its (4r x r) core."""
    model = moved(build(tiny("vit"), "fact:variant=tt:rank=3:scale=2.0")[0])
    u, v = model.fact.u.weight, model.fact.v.weight
    qkv, fc1 = model.blocks[1].attn.qkv, model.blocks[1].mlp.fc1
    q_core = qkv.cores.maps[0].weight
    torch.testing.assert_close(increment(qkv)[:48], 2.0 * v @ q_core @ u)
    band = fc1.cores.maps[0].weight[3:6]  # second chunk of the hidden units
    torch.testing.assert_close(increment(fc1)[48:96], 2.0 * v @ band @ u)
    fc2 = model.blocks[1].mlp.fc2  # its (r x 4r) core: the second r columns read the second hidden chunk
    torch.testing.assert_close(increment(fc2)[:, 48:96], 2.0 * v @ fc2.cores.maps[0].weight[:, 3:6] @ u)


def test_tk_increments_are_tucker_slices():
    """FacT-TK: slice k of the increment tensor is s * V (C x_3 P[:, k])^T U, k = 12 * block + kind."""
    model = moved(build(tiny("vit"), "fact:variant=tk:rank=3:scale=2.0")[0])
    f = model.fact
    u, v, core, p = f.u.weight, f.v.weight, f.core, f.p
    assert p.shape == (3, 2 * 12)
    attn = model.blocks[1].attn
    for kind, rows in ((1, slice(48, 96)), (2, slice(96, 144))):  # k and v of block 1
        slice_k = (core @ p[:, 12 + kind]).detach()
        torch.testing.assert_close(increment(attn.qkv)[rows], 2.0 * v @ slice_k.t() @ u)
    slice_o = (core @ p[:, 12 + 3]).detach()
    torch.testing.assert_close(increment(attn.proj), 2.0 * v @ slice_o.t() @ u)
    # the MLP as fact_tk.py: fc1_c, fc2_c = (C @ P[:, idx+4 : idx+12])[..., :4 | 4:].reshape(r, 4r)
    mlp_cores = (core @ p[:, 12 + 4:12 + 12]).detach()
    fc1_c, fc2_c = mlp_cores[:, :, :4].reshape(3, 12), mlp_cores[:, :, 4:].reshape(3, 12)
    fc1, fc2 = increment(model.blocks[1].mlp.fc1), increment(model.blocks[1].mlp.fc2)
    for t in range(4):  # hidden chunk t: fc1's output rows, fc2's input columns
        band = slice(3 * t, 3 * t + 3)
        torch.testing.assert_close(fc1[48 * t:48 * (t + 1)], 2.0 * v @ fc1_c[:, band].t() @ u)
        torch.testing.assert_close(fc2[:, 48 * t:48 * (t + 1)], 2.0 * v @ fc2_c[:, band] @ u)


@pytest.mark.parametrize("variant", ["tt", "tk"])
def test_factors_are_shared_and_saved_once(variant):
    model, _, task_keys = build(tiny("vit"), f"fact:variant={variant}")
    state = model.state_dict()
    assert [k for k in state if k.endswith("u.weight")] == ["fact.u.weight"], "U is stored once, on the model"
    assert "fact.v.weight" in task_keys
    wrapped = [m for m in model.modules() if isinstance(m, Factored)]
    assert len(wrapped) == 4 * 2 and all(m.held[0] is model.fact for m in wrapped)
    own = sum(p.numel() for m in wrapped for p in m.cores.parameters())
    assert own == (0 if variant == "tk" else 2 * (4 + 2 * 4) * 8 * 8), "TK's cores are slices of C x P"


@pytest.mark.parametrize("variant", ["tt", "tk"])
def test_every_factor_learns_once_v_is_not_zero(variant):
    model, _, _ = build(tiny("vit"), f"fact:variant={variant}")
    moved(model)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, NUM_CLASSES, (4,)))
    loss.backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.values())
    before = {n: p.detach().clone() for n, p in trained.items()}
    make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0)).step()
    assert all(not torch.equal(trained[n], before[n]) for n in trained)


@pytest.mark.parametrize("variant", ["tt", "tk"])
def test_merge_folds_into_a_plain_timm_model(variant):
    model = moved(build(tiny("vit"), f"fact:variant={variant}")[0], std=0.3)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
        merged = parse_method_spec(f"fact:variant={variant}").merge(model)
        plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES, **TINY_ARGS)
        assert same_architecture(merged, plain) is None
        after = merged(x)
    assert float((after - before).norm() / before.norm()) < 1e-5
    assert not any(isinstance(m, Factored) for m in merged.modules())


def test_variant_defaults_and_refusals():
    tt, tk = parse_method_spec("fact:variant=tt"), parse_method_spec("fact")
    assert (tt.rank, tt.scale, tk.rank, tk.scale) == (8, 1.0, 32, 10.0)
    assert method_label(tt) == "fact:variant=tt" and method_label(tk) == "fact"
    assert parse_method_spec("fact:variant=tt:rank=16:scale=0.1").rank == 16
    for bad in ("fact:rank=0", "fact:scale=0", "fact:variant=cp"):
        with pytest.raises(UserError):
            parse_method_spec(bad)
    odd_mlp = BackboneSpec("vit_tiny_patch16_224", {**TINY_ARGS, "mlp_ratio": 2.5}, pretrained=False)
    with pytest.raises(UserError, match="multiple"):
        build(odd_mlp, "fact")
