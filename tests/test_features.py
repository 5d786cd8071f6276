"""The feature cache: a head-only run trains on stored pre-logit features, with the uncached run's result."""
from __future__ import annotations


import pytest
import torch

from petlbench.data.cache import resolve_cache_dir
from petlbench.engine.features import RunCache
from petlbench.engine.execute import execute
from petlbench.plan import plan_one, resolve_backbone
from petlbench.registry import parse_method_spec
from petlbench.suite import load_suite
from tests.conftest import write_tiny_suite


def run(tmp_path, root, method="linear", features=True, out="results", recipe=None, **train):
    suite = load_suite(str(write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=6)))
    spec = resolve_backbone(suite, root, None, None, None, False)
    plan = plan_one(suite, suite.tasks[0], parse_method_spec(method), spec, 0, {"warmup_epochs": 1, **train}, recipe,
                    suite.protocol("final"), root)
    cache = RunCache(resolve_cache_dir(None), features=features)
    return execute(plan, tmp_path / out, torch.device("cpu"), cache, False, lambda line: None, "test",
                   save_weights=False)


def test_cached_features_give_the_uncached_result(tmp_path, tiny_tasks):
    cached = run(tmp_path, tiny_tasks, out="a")
    plain = run(tmp_path, tiny_tasks, features=False, out="b")
    assert cached["metrics"]["features"] == "cached" and plain["metrics"]["features"] == "not cached: off"
    assert cached["run_id"] == plain["run_id"], "the cache is not part of a run's identity"
    assert cached["metrics"]["test_top1"] == plain["metrics"]["test_top1"]
    assert cached["metrics"]["train_loss_last_epoch"] == pytest.approx(plain["metrics"]["train_loss_last_epoch"],
                                                                        rel=1e-4)


def test_features_are_stored_verified_and_reused(tmp_path, tiny_tasks):
    run(tmp_path, tiny_tasks, out="a")
    entries = sorted((resolve_cache_dir(None) / "features").glob("features-*"))
    assert entries, "features are kept on disk"
    newest = max(entries, key=lambda p: p.stat().st_mtime)
    again = run(tmp_path, tiny_tasks, out="c")
    assert again["metrics"]["features"] == "cached"
    assert newest.is_dir() and (newest / "meta.json").is_file()


@pytest.mark.parametrize("method,train,reason", [
    ("bitfit", {}, "no frozen prefix (the method trains or changes patch_embed, before block 0)"),
    ("linear", {}, None),
])
def test_only_head_only_runs_use_features(tmp_path, tiny_tasks, method, train, reason):
    record = run(tmp_path, tiny_tasks, method=method, **train)
    assert record["metrics"]["features"] == ("cached" if reason is None else f"not cached: {reason}")


def test_drop_path_in_the_backbone_turns_the_cache_off(tmp_path, tiny_tasks):
    record = run(tmp_path, tiny_tasks, recipe="noah")  # NOAH's drop-path 0.1: features differ every epoch
    assert record["metrics"]["features"] == "not cached: DropPath is active in the frozen backbone"
