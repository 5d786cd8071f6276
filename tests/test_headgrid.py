"""The tune grid at once: every point of a head-only grid trained together equals training it alone."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from petlbench.engine.features import FeatureData
from petlbench.engine.headgrid import batchable, fit_heads
from petlbench.specs import TrainConfig
from petlbench.engine.train import fit


def features(n: int, dim: int = 16, classes: int = 5, seed: int = 0) -> FeatureData:
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 2  # one task, two splits
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return FeatureData(centres[labels] + torch.randn(n, dim, generator=g), labels)


@pytest.mark.parametrize("optimizer,lrs", [("sgd", [2.0, 0.5, 0.05]), ("adamw", [1e-2, 1e-3])])
def test_each_point_equals_training_it_alone(optimizer, lrs):
    train, test = features(90), features(60, seed=1)
    torch.manual_seed(3)
    head = nn.Linear(16, 5)
    base = TrainConfig(optimizer=optimizer, epochs=4, warmup_epochs=1, batch_size=16, eval_batch_size=32,
                       lr_scale_batch=256 if optimizer == "sgd" else None)
    configs = [dataclasses.replace(base, lr=lr, weight_decay=wd) for lr in lrs for wd in (0.0, 0.01)]
    assert batchable(configs)
    together = fit_heads(head, train, test, configs, torch.device("cpu"), seed=7)
    for cfg, result in zip(configs, together):
        alone_head = copy.deepcopy(head)
        alone = fit(alone_head, train, test, cfg, torch.device("cpu"), seed=7, progress=False)
        assert result["top1"] == alone["top1"], cfg
        assert result["train_loss_last_epoch"] == pytest.approx(alone["train_loss_last_epoch"], rel=1e-4, abs=1e-6)
        torch.testing.assert_close(result["head"]["weight"], alone_head.weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result["head"]["bias"], alone_head.bias.detach(), rtol=1e-4, atol=1e-5)


def test_a_diverging_point_fails_alone():
    train, test = features(64), features(32, seed=1)
    head = nn.Linear(16, 5)
    base = TrainConfig(optimizer="sgd", epochs=3, warmup_epochs=0, batch_size=16)
    results = fit_heads(head, train, test, [dataclasses.replace(base, lr=1e7), dataclasses.replace(base, lr=0.1)],
                        torch.device("cpu"), seed=0)
    assert "error" in results[0] and ("diverged" in results[0]["error"] or "non-finite" in results[0]["error"])
    assert "top1" in results[1] and results[1]["top1"] > 0.5


def test_points_differing_in_more_than_lr_and_wd_are_not_batched():
    base = TrainConfig()
    assert not batchable([base, dataclasses.replace(base, epochs=3)])
    assert not batchable([base])


def test_the_tune_protocol_trains_a_linear_grid_at_once(tmp_path, tiny_tasks):
    import petlbench
    from petlbench.records import load_records
    from tests.conftest import write_tiny_suite
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=3)
    finals = petlbench.run(suite=str(suite), methods="linear", data_root=str(tiny_tasks), out=str(tmp_path / "r"),
                           protocol="tune", grid={"lr": [1.0, 0.5, 0.1], "weight_decay": [0.0, 0.001]},
                           progress=False, log=lambda line: None)
    search = [r for r in load_records(tmp_path / "r") if r["protocol"].get("stage") == "search"]
    assert len(search) == 6 and all(r["metrics"]["grid"] == "trained at once with 6 points" for r in search)
    assert {r["data"]["build"] for r in [*search, *finals]} == {"noah-jpeg"}  # the demo writer's JPEGs, NOAH's lists
    assert finals[0]["status"] == "success" and finals[0]["selection"]["grid_points"] == 6
    again = petlbench.run(suite=str(suite), methods="linear", data_root=str(tiny_tasks), out=str(tmp_path / "r"),
                          protocol="tune", grid={"lr": [1.0, 0.5, 0.1], "weight_decay": [0.0, 0.001]},
                          progress=False, log=lambda line: None)
    assert again[0]["run_id"] == finals[0]["run_id"], "a re-run skips the batched search and the final"
