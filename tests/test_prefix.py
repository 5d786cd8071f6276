"""The frozen-prefix cache: Partial-k trains blocks[k:] on stored activations entering block k with the uncached
run's result; a method that trains or changes block 0 (or what precedes it) is not cached, with the reason."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from petlbench.backbone import BackboneSpec
from petlbench.data.cache import resolve_cache_dir
from petlbench.params import build_model
from petlbench.engine.prefix import Tail, first_block, prefix_forward
from petlbench.registry import parse_method_spec
from tests.conftest import TINY_ARGS
from tests.families import tiny
from tests.test_features import run

PLAIN = SimpleNamespace(augment="none")


def test_partial_on_cached_prefix_gives_the_uncached_result(tmp_path, tiny_tasks):
    cached = run(tmp_path, tiny_tasks, method="partial", out="a")
    plain = run(tmp_path, tiny_tasks, method="partial", features=False, out="b")
    model, _, _ = build_model(tiny("vit"), parse_method_spec("partial"), 6, seed=0)
    k = parse_method_spec("partial").first_trainable_block(model)  # what partial declares: 1 of 2 blocks
    assert cached["metrics"]["features"] == f"cached before block {k}" == "cached before block 1"
    assert cached["metrics"]["features_time_s"] >= 0 and plain["metrics"]["features"] == "not cached: off"
    assert cached["run_id"] == plain["run_id"], "the cache is not part of a run's identity"
    assert cached["metrics"]["test_top1"] == plain["metrics"]["test_top1"]
    for key in ("train_loss_first_step", "train_loss_last_epoch"):
        assert cached["metrics"][key] == pytest.approx(plain["metrics"][key], rel=1e-4)


def test_drop_path_after_block_k_draws_the_same_random_numbers(tmp_path, tiny_tasks):
    """NOAH's drop-path 0.1 on 2 blocks: 0 in block 0 (timm's linear ramp), 0.1 in the trained block 1."""
    cached = run(tmp_path, tiny_tasks, method="partial", recipe="noah", out="a")
    plain = run(tmp_path, tiny_tasks, method="partial", recipe="noah", features=False, out="b")
    assert cached["metrics"]["features"] == "cached before block 1"
    assert cached["metrics"]["test_top1"] == plain["metrics"]["test_top1"]
    assert cached["metrics"]["train_loss_last_epoch"] == pytest.approx(plain["metrics"]["train_loss_last_epoch"],
                                                                        rel=1e-4)


def test_prefix_is_stored_verified_and_reused(tmp_path, tiny_tasks):
    run(tmp_path, tiny_tasks, method="partial", out="a")
    entries = list((resolve_cache_dir(None) / "features").glob("prefix-*"))
    assert entries and all((e / "meta.json").is_file() for e in entries)
    again = run(tmp_path, tiny_tasks, method="partial", out="c")
    assert again["metrics"]["features"] == "cached before block 1"
    assert sorted((resolve_cache_dir(None) / "features").glob("prefix-*")) == sorted(entries)


@pytest.mark.parametrize("method,reason", [
    ("bitfit", "no frozen prefix (the method trains or changes patch_embed, before block 0)"),
    ("vpt_shallow:tokens=4", "no frozen prefix (the method trains or changes block 0)"),  # 200 by default: slow here
    ("partial:blocks=2", "no frozen prefix (the method trains or changes block 0)"),
])
def test_a_method_in_block_0_is_not_prefix_cached(tmp_path, tiny_tasks, method, reason):
    record = run(tmp_path, tiny_tasks, method=method)
    assert record["status"] == "success" and record["metrics"]["features"] == f"not cached: {reason}"


def test_what_rules_a_prefix_out():
    model, _, _ = build_model(tiny("vit"), parse_method_spec("partial"), 5, seed=0)
    assert first_block(model, tiny("vit"), 5, PLAIN) == 1
    assert first_block(model, tiny("vit"), 5, SimpleNamespace(augment="random_crop_flip")) == (
        "train-time augmentation (random_crop_flip)")
    model.extra = torch.nn.Linear(2, 2)
    assert first_block(model, tiny("vit"), 5, PLAIN) == "the method added or removed model.extra"
    deep = BackboneSpec("vit_tiny_patch16_224", {**TINY_ARGS, "depth": 3, "drop_path_rate": 0.2}, pretrained=False)
    model, _, _ = build_model(deep, parse_method_spec("partial"), 5, seed=0)  # drop-path 0.1 in block 1
    assert first_block(model, deep, 5, PLAIN) == "DropPath is active before block 2 (in blocks.1)"
    swin, _, _ = build_model(tiny("swin"), parse_method_spec("partial"), 5, seed=0)
    assert first_block(swin, tiny("swin"), 5, PLAIN) == (
        "the method trains more than the head (a frozen prefix is cached on timm ViTs only)")


@pytest.mark.parametrize("args", [{}, {"global_pool": "avg", "fc_norm": True, "reg_tokens": 2}])
def test_prefix_and_tail_are_the_model(args):
    """Tail(prefix(x)) is the model's forward, and the Tail's parameters are the model's own tensors."""
    spec = BackboneSpec("vit_tiny_patch16_224", {**TINY_ARGS, **args}, pretrained=False)
    model, _, _ = build_model(spec, parse_method_spec("partial"), 5, seed=0)
    tail = Tail(model, 1).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tail(prefix_forward(model.eval(), 1, x)), model(x))
    owned = {id(p) for p in model.parameters()}
    assert all(id(p) in owned for p in tail.parameters())
    assert {id(p) for p in tail.parameters() if p.requires_grad} == {id(p) for p in model.parameters()
                                                                      if p.requires_grad}
