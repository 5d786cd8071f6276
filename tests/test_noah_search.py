"""noah:subnet=search: NOAH's supernet (shared, sliced weights), its evolutionary search on val, the chosen subnet
retrained (petlbench.engine.supernet, .evolution, .noah_search; petlbench.sweep.noah_search)."""
from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
import yaml

from petlbench.engine.evolution import Evolution
from petlbench.engine.supernet import NoahSupernet, SuperAdapter, SuperLoRA, SuperPrompts, depth_choices, set_subnet
from petlbench.methods.adapter import AdaptedDropPath
from petlbench.methods.noah import FusedLoRA, NoahConfig, TailPrompts, count
from petlbench.params import build_model
from petlbench.records import load_records
from petlbench.registry import parse_method_spec
from tests.conftest import petlbench_cli, write_tiny_suite
from tests.families import tiny

SEARCH = "noah:subnet=search:choices=1+2:limit=0.001:population=4:generations=2:supernet_epochs=2"


def supernet(choices=(1, 4, 6)):
    model = build_model(tiny("vit"), NoahSupernet(NoahConfig(subnet="search", choices=list(choices))), 5, seed=0)[0]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # LoRA's B starts at zero: make every module matter
    return model.eval()


def of(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("sizes", [
    {"prompts": [6, 6], "lora": [6, 6], "adapter": [6, 6]},  # the space's largest: every tensor whole
    {"prompts": [4, 1], "lora": [1, 0], "adapter": [0, 4]},
    {"prompts": [0, 4], "lora": [6, 4], "adapter": [1, 0]},  # block 0 without prompts: block 1 strips nothing
])
def test_a_sampled_subnet_is_the_noah_subnet_on_the_sliced_weights(tmp_path, sizes):
    big = supernet()
    set_subnet(big, sizes)
    path = tmp_path / "subnet.yaml"
    path.write_text(yaml.safe_dump(sizes))
    small = build_model(tiny("vit"), parse_method_spec(f"noah:subnet={path}"), 5, seed=0)[0].eval()
    prompts, loras = iter(of(small, TailPrompts)), iter(of(small, FusedLoRA))
    adapters = iter(m.adapter for m in of(small, AdaptedDropPath))
    with torch.no_grad():
        for i, (sp, sl, sa) in enumerate(zip(of(big, SuperPrompts), of(big, SuperLoRA), of(big, SuperAdapter))):
            p, r, a = sizes["prompts"][i], sizes["lora"][i], sizes["adapter"][i]
            if p:
                next(prompts).prompts.copy_(sp.prompts[:, :p])
            if r:
                lora = next(loras)
                lora.lora_a.copy_(sl.lora_a[:r])
                lora.lora_b.copy_(sl.lora_b[:, :r])
            if a:
                adapter = next(adapters)
                adapter.down.weight.copy_(sa.down_weight[:a])
                adapter.down.bias.copy_(sa.down_bias[:a])
                adapter.up.weight.copy_(sa.up_weight[:, :a])
                adapter.up.bias.copy_(sa.up_bias)
        small.head.load_state_dict(big.head.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-5)


def test_training_samples_a_subnet_per_batch_from_the_seed():
    def drawn(seed):
        method = NoahSupernet(NoahConfig(subnet="search", choices=[1, 2, 3]))
        model = build_model(tiny("vit"), method, 5, seed=seed)[0]
        x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
        seen = []
        for _ in range(6):
            method.training_loss(model, x, y, torch.nn.functional.cross_entropy)
            seen.append(tuple(tuple(m.active for m in of(model, kind))
                              for kind in (SuperPrompts, SuperLoRA, SuperAdapter)))
        return seen
    assert drawn(0) == drawn(0) and drawn(0) != drawn(1)
    assert len(set(drawn(0))) > 1, "a new subnet per batch"


def search(seed, limit=1500.0):
    scores = {}

    def score(sizes):  # a val top-1 that prefers prompts in block 0 and small LoRA
        return scores.setdefault(repr(sizes), sizes["prompts"][0] / 10 - sum(sizes["lora"]) / 100)
    found = Evolution([1, 5, 10], depth_choices(12), 12, limit, lambda s: count(s, 8), score, random.Random(seed),
                      population=8, generations=3)
    return found, found.run()


def test_evolution_keeps_under_the_limit_and_is_deterministic_per_seed():
    found, result = search(0)
    assert count(result["chosen"], 8) <= 1500
    assert all(v["params"] <= 1500 for v in found.seen.values() if v["val_top1"] is not None)
    assert result["over_limit"] > 0, "the limit bites in this space"
    assert [h["generation"] for h in result["history"]] == [0, 1, 2, 3]
    tops = [h["top_val_top1"][0] for h in result["history"]]
    assert tops == sorted(tops), "the best never gets worse"
    assert search(0)[1] == result
    assert search(1)[1]["chosen"] != result["chosen"] or search(1)[1]["history"] != result["history"]
    assert search(0, limit=10.0)[1]["chosen"] is None  # nothing fits: no answer, and no endless loop


def run(suite, data, out, methods=SEARCH, seeds="0"):
    return petlbench_cli("run", "--suite", str(suite), "--methods", methods, "--tasks", "count", "--data-root",
                         str(data), "--out", str(out), "--quiet", "--seeds", seeds)


def test_search_on_val_never_reads_test_then_the_subnet_is_retrained(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9}, epochs=2)
    out = tmp_path / "results"
    test_file = tiny_tasks / "count" / "test.txt"
    shutil.move(test_file, tmp_path / "test.txt.away")  # no test split during the search

    first = run(suite, tiny_tasks, out)
    assert first.returncode == 1  # the final run needs test.txt, which is gone
    (searched,) = [r for r in load_records(out) if r.get("kind") == "noah_search"]
    assert searched["status"] == "success", searched.get("error")
    assert searched["protocol"]["train_splits"] == ["train800"] and searched["protocol"]["eval_splits"] == ["val200"]
    assert searched["data"]["train_images"] == 48 and searched["data"]["eval_images"] == 16
    assert set(searched["data"]["split_files_sha256"]) == {"train800", "val200"}
    assert "test_top1" not in searched["metrics"] and searched["train"]["epochs"] == 2
    found = searched["noah_search"]
    assert found["subnet_params"] == count(found["subnet"], 48) <= 1000  # limit=0.001 million
    assert found["evaluated"] >= 4 and found["over_limit"] > 0
    subnet_file = next(out.rglob("*.subnet.yaml"))
    assert yaml.safe_load(subnet_file.read_text()) == found["subnet"]
    finals = [r for r in load_records(out) if r.get("kind") != "noah_search"]
    assert len(finals) == 1 and finals[0]["status"] == "failed" and "test.txt" in finals[0]["error"]

    again = run(suite, tiny_tasks, tmp_path / "again")  # deterministic per seed
    (repeat,) = [r for r in load_records(tmp_path / "again") if r.get("kind") == "noah_search"]
    assert repeat["noah_search"]["subnet"] == found["subnet"]
    assert repeat["metrics"]["val_top1"] == searched["metrics"]["val_top1"] and again.returncode == 1

    shutil.move(tmp_path / "test.txt.away", test_file)
    second = run(suite, tiny_tasks, out)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("done before, skipped") == 1, "the search is not repeated"
    (final,) = [r for r in load_records(out) if r.get("kind") != "noah_search" and r["status"] == "success"]
    assert final["protocol"]["train_splits"] == ["train800val200"] and final["protocol"]["eval_splits"] == ["test"]
    assert final["method"]["label"] == SEARCH and final["method"]["options"]["subnet"] == "search"
    assert final["noah_search"]["run_id"] == searched["run_id"]
    assert final["noah_search"]["subnet"] == found["subnet"]
    assert final["params"]["trainable_excl_head"] == found["subnet_params"]
    assert final["train"]["epochs"] == 2 and final["train"]["lr"] == 1e-3  # retrained with the run's recipe
    assert (out / final["noah_search"]["record"]).is_file()
    status = petlbench_cli("status", str(out), "--suite", str(suite), "--methods", SEARCH, "--tasks", "count",
                           "--data-root", str(tiny_tasks), "--seeds", "0", "--format", "json")
    assert status.returncode == 0, status.stderr
    stages = {row["stage"]: row for row in json.loads(status.stdout)["rows"]}
    assert stages["search"]["done"] == 1 and stages["final"]["done"] == 1, "status finds the search and its final"
    (record_path,) = [p for p in out.glob("tiny/count/*.json")]  # the final's record (the search's is in search/)
    evaluated = petlbench_cli("eval", str(record_path))
    assert evaluated.returncode == 0 and "reproduced exactly" in evaluated.stdout, "eval rebuilds the searched subnet"


def test_search_is_refused_off_the_final_protocol(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    proc = petlbench_cli("run", "--suite", str(suite), "--methods", SEARCH, "--data-root", str(tiny_tasks),
                         "--out", str(tmp_path / "r"), "--protocol", "tune", "--grid", "{lr: [0.1]}")
    assert proc.returncode == 2 and "--protocol final only" in proc.stderr
