"""The tune protocol: grid on train, selection on val, final runs on train+val, test read last."""
from __future__ import annotations

import json
import shutil

import pytest

from petlbench.records import load_records
from petlbench.sweep.tune import choose
from tests.conftest import petlbench_cli, write_tiny_suite

GRID = "{lr: [0.5, 0.05], weight_decay: [0.0]}"


def tune(suite, data, out, *extra):
    return petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--tasks", "count", "--data-root",
                         str(data), "--out", str(out), "--quiet", "--protocol", "tune", "--grid", GRID,
                         "--seeds", "0,1", *extra)


def test_search_selects_on_val_and_never_reads_test(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9}, epochs=2)
    out = tmp_path / "results"
    test_file = tiny_tasks / "count" / "test.txt"
    shutil.move(test_file, tmp_path / "test.txt.away")  # no test split at all during the search

    first = tune(suite, tiny_tasks, out)
    assert first.returncode == 1  # the final runs need test.txt, which is gone
    search = [r for r in load_records(out) if r["protocol"].get("stage") == "search"]
    assert len(search) == 2 and all(r["status"] == "success" for r in search)
    assert all(r["protocol"]["train_splits"] == ["train800"] and r["protocol"]["eval_splits"] == ["val200"]
               for r in search)
    assert all("val_top1" in r["metrics"] and "test_top1" not in r["metrics"] for r in search)
    assert sorted(r["train"]["lr"] for r in search) == [0.05, 0.5]
    (selection_file,) = out.rglob("*__selection__*.json")
    selection = json.loads(selection_file.read_text())
    assert selection["grid"] == {"lr": [0.5, 0.05], "weight_decay": [0.0]}
    assert len(selection["results"]) == 2
    best = max(selection["results"], key=lambda r: (r["val_top1"], -r["point"]["lr"]))
    assert selection["chosen"] == best["point"]
    finals = [r for r in load_records(out) if r["protocol"].get("stage") == "final"]
    assert len(finals) == 2 and all(r["status"] == "failed" and "test.txt" in r["error"] for r in finals)

    shutil.move(tmp_path / "test.txt.away", test_file)
    second = tune(suite, tiny_tasks, out)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("done before, skipped") == 2, "the search is not repeated"
    finals = [r for r in load_records(out) if r["protocol"].get("stage") == "final"]
    assert len(finals) == 2 and {r["seed"] for r in finals} == {0, 1}
    for r in finals:
        assert r["status"] == "success" and r["protocol"]["train_splits"] == ["train800val200"]
        assert r["protocol"]["eval_splits"] == ["test"] and r["train"]["lr"] == selection["chosen"]["lr"]
        assert r["selection"]["chosen"] == selection["chosen"] and r["data"]["train_images"] == 64
    table = petlbench_cli("table", str(out), "--format", "csv")
    assert table.returncode == 0 and table.stdout.count("linear") == 1, "search runs are not tabulated"

    status = petlbench_cli("status", str(out), "--suite", str(suite), "--methods", "linear", "--tasks", "count",
                           "--data-root", str(tiny_tasks), "--protocol", "tune", "--grid", GRID, "--seeds", "0,1",
                           "--format", "json")
    assert status.returncode == 0, status.stderr
    stages = {row["stage"]: row for row in json.loads(status.stdout)["rows"]}
    assert stages["search"]["done"] == 2 and stages["final"]["done"] == 2, "the finals found by the selection file"


def test_grid_may_tune_method_options(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out = tmp_path / "results"
    result = petlbench_cli("run", "--suite", str(suite), "--methods", "vpt_shallow", "--data-root", str(tiny_tasks),
                           "--out", str(out), "--quiet", "--protocol", "tune",
                           "--grid", "{tokens: [1, 3], lr: [0.1]}")
    assert result.returncode == 0, result.stderr
    search = [r for r in load_records(out) if r["protocol"].get("stage") == "search"]
    assert sorted(r["method"]["options"]["tokens"] for r in search) == [1, 3]
    (final,) = [r for r in load_records(out) if r["protocol"].get("stage") == "final"]
    assert final["method"]["options"]["tokens"] == final["selection"]["chosen"]["tokens"]
    assert final["params"]["added"] == final["method"]["options"]["tokens"] * 48


@pytest.mark.parametrize("grid,needle", [
    ("{lrr: [0.1]}", "grid key 'lrr'"),
    ("{lr: []}", "non-empty list"),
    ("{lr: [fast]}", "'lr' expects float"),
    ("[1, 2]", "--grid: expected a YAML mapping"),
])
def test_bad_grid_is_one_line(tmp_path, tiny_tasks, grid, needle):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    result = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                           "--out", str(tmp_path / "results"), "--protocol", "tune", "--grid", grid)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr
    assert not list((tmp_path / "results").rglob("*.json")) if (tmp_path / "results").exists() else True


def test_ties_go_to_the_smaller_lr():
    ok = {"status": "success", "metrics": {"val_top1": 0.5}, "train": {}}
    worse = {"status": "success", "metrics": {"val_top1": 0.4}, "train": {}}
    failed = {"status": "failed", "train": {}}
    assert choose([({"lr": 0.5}, ok), ({"lr": 0.05}, ok), ({"lr": 0.01}, worse)]) == {"lr": 0.05}
    assert choose([({"lr": 0.01}, failed), ({"lr": 1.0}, ok)]) == {"lr": 1.0}
    assert choose([({"lr": 0.01}, failed)]) is None
