"""`compare`, the table's rank / frontier / PPT / unstable marks and `plot --kind rank`, on record files written in
the runner's format (every key a real record has, the numbers chosen here); nothing trains."""
from __future__ import annotations

import copy
import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from petlbench.errors import UserError
from petlbench.records import SCHEMA, write_atomic
from petlbench.report import stats
from petlbench.report.compare import Pair, compare, extra_sections, render
from petlbench.report.tables import render as table
from petlbench.suite import load_suite
from tests.conftest import assert_one_line_error, petlbench_cli

VTAB = [(t.name, t.group, t.classes) for t in load_suite("vtab1k").tasks]
AUGREG = "vit_base_patch16_224.augreg_in21k"

TEMPLATE = {  # a final run's record as petlbench.engine.execute writes it (schema 2), trimmed of nothing it needs
    "schema": SCHEMA, "run_id": "", "config_id": "", "data_id": "0123456789abcdef", "status": "success", "error": None,
    "suite": "vtab1k", "task": "", "task_group": "", "task_index": 0, "num_classes": 0, "seed": 0,
    "method": {"name": "", "label": "", "origin": "builtin", "options": {}},
    "backbone": {"name": AUGREG, "args": {"drop_path_rate": 0.1}, "weights": "timm-pretrained", "checkpoint": None,
                 "checkpoint_sha256": None},
    "protocol": {"name": "final", "train_splits": ["train800val200"], "eval_splits": ["test"], "metric": "top1",
                 "report": "last epoch; no selection on the evaluation split"},
    "recipe": {"name": "noah", "source": "NOAH", "defaults": "NOAH"},
    "train": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100, "batch_size": 64},
    "data": {"root": "/data/vtab-1k", "layout": "noah", "train_images": 1000, "eval_images": 10000,
             "folder": "", "split_files_sha256": {"train800val200": "aa", "test": "bb"}},
    "env": {"python": "3.11", "petlbench": "0.1.0"},
    "started_at": "2026-12-01T00:00:00+00:00", "finished_at": "2026-12-01T01:00:00+00:00",
    "params": {"trainable": 0, "trainable_excl_head": 0, "head": 0, "backbone": 85_798_656, "added": 0, "total": 0},
    "metrics": {"test_top1": 0.0, "train_loss_last_epoch": 0.1, "epochs": 100},
    "weights": {"file": "x.safetensors", "bytes": 4096, "sha256": "cc", "tensors": 2, "parameters": 0},
    "wall_time_s": 60.0, "peak_memory": {"kind": "cuda max allocated", "mb": 4000.0},
}


def record(task: str, method: str, seed: int, top1: float, params: int = 0, protocol: str = "final",
           backbone: str = AUGREG) -> dict:
    index = next(i for i, (name, *_) in enumerate(VTAB) if name == task)
    _, group, classes = VTAB[index]
    r = copy.deepcopy(TEMPLATE)
    config = f"{method}-{task}-{seed}-{protocol}-{backbone}"
    r.update(run_id=config + "-0123", config_id=config, task=task, task_group=group, task_index=index,
             num_classes=classes, seed=seed)
    r["method"].update(name=method.split(":")[0], label=method)
    r["backbone"]["name"], r["protocol"]["name"] = backbone, protocol
    r["params"].update(trainable=params + 768 * classes, trainable_excl_head=params, head=768 * classes)
    r["data"]["folder"] = f"/data/vtab-1k/{task}"
    r["metrics"]["test_top1"] = top1 / 100
    return r


def write(folder, records):
    for r in records:
        write_atomic(folder / r["suite"] / r["task"] / f"{r['run_id']}.json", r)
    return folder


def grid(method, accuracy, params=0, seeds=(0, 1, 2), tasks=None):
    """Records of `method` on every task x seed, top-1 = accuracy(task index, seed)."""
    return [record(t, method, s, accuracy(i, s), params) for i, (t, *_) in enumerate(VTAB)
            if tasks is None or t in tasks for s in seeds]


def base(i, s):
    return 60.0 + 2 * (i % 7) + 0.3 * s


@pytest.fixture
def win(tmp_path):
    """lora 3 points above linear everywhere (with a small spread); vpt_deep within +-0.5 of linear."""
    jitter = lambda i, s: 0.4 * math.sin(3 * i + s)
    return write(tmp_path, grid("linear", base)
                 + grid("lora", lambda i, s: base(i, s) + 3 + jitter(i, s), params=294_912)
                 + grid("vpt_deep:tokens=10", lambda i, s: base(i, s) + (0.5 if (i + s) % 2 else -0.5), params=92_160))


def test_clear_win_per_group_and_overall(win):
    [c] = compare(win, "lora", "linear")
    assert len(c.pairs) == 57 and [g for g, *_ in c.groups] == ["natural", "specialized", "structured", "overall"]
    diffs = [p.difference for p in c.pairs]
    expected = stats.paired(diffs)
    assert c.overall.mean == pytest.approx(np.mean(diffs)) and c.overall.verdict == "A better"
    assert (c.overall.low, c.overall.high, c.overall.p) == (expected.low, expected.high, expected.p)
    assert 2.5 < c.overall.low < 3 < c.overall.high < 3.5 and c.overall.p < 1e-9
    assert all(d.verdict == "A better" for _, _, d in c.groups)
    assert [(g, n, tasks) for g, tasks, d in c.groups for n in [d.n]] == [
        ("natural", 21, 7), ("specialized", 12, 4), ("structured", 24, 8), ("overall", 57, 19)]
    [back] = compare(win, "linear", "lora")
    assert back.overall.verdict == "B better" and back.overall.mean == pytest.approx(-c.overall.mean)
    md = render(win, "lora", "linear")
    assert "**verdict: A better (lora): A - B = +3." in md and "10000 resamples" in md and "numpy seed 0" in md
    assert "zero_method='zsplit'" in md and "excludes 0 and the Wilcoxon signed-rank p < 0.05" in md


def test_tie_is_no_detectable_difference(win, tmp_path):
    [c] = compare(win, "vpt_deep:tokens=10", "linear")
    assert c.overall.verdict == "no detectable difference", "differences of +-0.5 in equal numbers"
    assert c.overall.low < 0 < c.overall.high and c.overall.p > 0.05
    same = write(tmp_path / "same", grid("a", base, seeds=(0,)) + grid("b", base, seeds=(0,)))
    [c] = compare(same, "a", "b")
    assert (c.overall.mean, c.overall.p, c.overall.verdict) == (0.0, 1.0, "no detectable difference")
    few = write(tmp_path / "few", [record(t, m, 0, 50.0 + 10 * (m == "a") + i) for i, t in enumerate(("cifar", "dtd",
                                   "eurosat", "dmlab", "kitti")) for m in "ab"])
    [c] = compare(few, "a", "b")
    assert c.overall.low == c.overall.high == 10.0 and c.overall.p < 0.05, "tied: the normal approximation"
    assert c.overall.verdict == "no detectable difference", "5 pairs: the exact test could not say p < 0.05"
    assert "overall: fewer than 6 pairs" in render(few, "a", "b")


def test_only_shared_task_seed_pairs_under_one_context_and_what_was_dropped(tmp_path):
    folder = write(tmp_path, grid("a", base, seeds=(0, 1, 2)) + grid("b", base, seeds=(0, 1))
                   + [record("cifar", "b", 0, 50.0, protocol="tune"), record("dtd", "a", 5, 40.0, backbone="other")])
    [c] = compare(folder, "a", "b")
    assert len(c.pairs) == 38 and {p.seed for p in c.pairs} == {0, 1}
    assert c.protocol == "final" and c.backbone == f"{AUGREG} (timm-pretrained)"
    assert c.dropped[0].startswith("a: 19 run(s) without a b run of the same task and seed (cifar seed 2, ")
    assert "1 run(s) under a suite/backbone/protocol where it shares no (task, seed) with b" in c.dropped[0]
    assert "vtab1k / other (timm-pretrained) / final" in c.dropped[0]
    assert c.dropped[1] == ("b: 1 run(s) under a suite/backbone/protocol where it shares no (task, seed) with a "
                            f"(vtab1k / {AUGREG} (timm-pretrained) / tune)")
    assert "dropped: a: 19 run(s)" in render(folder, "a", "b")


def test_json_format_and_the_place_for_per_sample_sections(win):
    data = json.loads(render(win, "lora", "vpt_deep:tokens=10", "json"))
    assert data["a"] == "lora" and data["bootstrap"] == {"level": 0.95, "resamples": 10000, "seed": 0,
                                                         "method": "percentile"}
    assert data["wilcoxon"]["zero_method"] == "zsplit" and "excludes 0" in data["rule"]
    [c] = data["comparisons"]
    overall = c["groups"][-1]
    assert overall["group"] == "overall" and overall["pairs"] == len(c["pairs"]) == 57
    assert overall["mean_difference"] == pytest.approx(np.mean([p["difference"] for p in c["pairs"]]))
    assert c["verdict"] == overall["verdict"] == "A better" and c["sections"] == []
    [found] = compare(win, "lora", "linear")
    first = found.pairs[0]
    assert first.a_path.name == f"{first.a['run_id']}.json" and first.a_path.parent.name == first.task
    assert json.loads(first.b_path.read_text())["method"]["label"] == "linear", "paths for per-sample sections"
    pair = Pair("cifar", "natural", 0, record("cifar", "a", 0, 70.0), record("cifar", "b", 0, 60.0))
    assert pair.difference == pytest.approx(10.0) and extra_sections([pair]) == []


def test_compare_cli_and_its_one_line_errors(win, tmp_path):
    done = petlbench_cli("compare", str(win), "lora", "linear", "--format", "json")
    assert done.returncode == 0 and json.loads(done.stdout)["comparisons"][0]["verdict"] == "A better"
    assert_one_line_error(petlbench_cli("compare", str(win), "lora", "nope"), "no successful final run of method 'nope'")
    assert_one_line_error(petlbench_cli("compare", str(win), "lora", "lora"), "the same method label")
    other = write(tmp_path / "other", grid("a", base, seeds=(0,)) + grid("b", base, seeds=(1,)))
    with pytest.raises(UserError, match="share no \\(task, seed\\)"):
        compare(other, "a", "b")


# --- the table: average rank, Pareto frontier, PPT, unstable cells ---

def test_table_rank_frontier_and_ppt_by_hand(tmp_path):
    tasks = ("cifar", "dtd", "eurosat", "clevr_count")  # natural x2, specialized, structured
    accs = {"linear": (60, 50, 80, 40), "bitfit": (65, 55, 85, 45), "vpt": (64, 56, 84, 44), "full": (70, 60, 90, 50)}
    params = {"linear": 0, "bitfit": 100_000, "vpt": 500_000, "full": 85_798_656}
    folder = write(tmp_path, [record(t, m, 0, a, params[m]) for m, row in accs.items() for t, a in zip(tasks, row)])
    frame = pd.read_csv(io.StringIO(table(folder, "csv", published="never", ppt=True)), dtype=str,
                        keep_default_na=False).set_index("method")
    # ranks per task: cifar full 1, bitfit 2, vpt 3, linear 4; dtd full, vpt, bitfit, linear; eurosat as cifar; clevr too
    assert frame["avg rank"].to_dict() == {"linear": "4.00", "bitfit": "2.25", "vpt": "2.75", "full": "1.00"}
    assert frame["pareto"].to_dict() == {"linear": "True", "bitfit": "True", "vpt": "False", "full": "True"}
    # mean (tasks) of bitfit: (65 + 55 + 85 + 45) / 4 = 62.5 -> 0.625 x exp(-log10(1.01))
    assert frame.loc["bitfit", "PPT"] == f"{0.625 * math.exp(-math.log10(1.01)):.3f}*", "4 of 19 tasks: marked"
    md = table(folder, "md", published="never")
    assert "| bitfit ◆" in md and "| vpt " in md and "| vpt ◆" not in md and "PPT" not in md
    chi2, p = stats.friedman(pd.DataFrame([[4, 4, 4, 4], [2, 3, 2, 2], [3, 2, 3, 3], [1, 1, 1, 1]]))
    assert f"Friedman chi2 = {chi2:.2f}" in md and f"= {stats.critical_difference(4, 4):.2f}: two rows" in md
    assert "◆ beside the method: on the Pareto frontier of mean (groups)" in md


def test_one_method_has_no_rank_column(tmp_path):
    folder = write(tmp_path, [record("cifar", "linear", 0, 60.0)])
    assert "avg rank" not in table(folder, "md", published="never")


def test_unstable_cells_are_footnoted_with_the_seeds_they_need(tmp_path):
    spread = {"svhn": (65.9, 73.0, 81.8), "cifar": (70.0, 71.0, 72.0)}  # VPT#42: SVHN VPT-deep 65.9 to 81.8
    folder = write(tmp_path, [record(t, "vpt_deep", s, a) for t, accs in spread.items() for s, a in enumerate(accs)])
    md = table(folder, "md", published="never")
    std = float(np.std(spread["svhn"], ddof=1))
    n = stats.seeds_needed(std)
    assert f"! vpt_deep on svhn: 65.9 to 81.8 over 3 seeds (std {std:.1f}, range 15.9); about {n} seeds" in md
    assert "on cifar" not in md and "n = (t s / 1)^2" in md
    assert n == 247  # (t s)^2 with s = 7.96: about (1.97 x 7.96)^2


# --- plots ---

def test_rank_plot_written_and_non_empty(win):
    done = petlbench_cli("plot", str(win), "--kind", "rank")
    assert done.returncode == 0, done.stderr
    paths = done.stdout.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["vtab1k_rank.png", "vtab1k_rank.svg"]
    png, svg = (open(p, "rb").read() for p in paths)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = svg.decode()
    assert "critical-difference" in text and "lora (1.00)" in text and "Friedman chi2" in text
    assert "clique-0" in text, "vpt_deep and linear do not differ: joined by a bar"


def test_rank_plot_needs_two_methods(tmp_path):
    folder = write(tmp_path, [record("cifar", "linear", 0, 60.0)])
    assert_one_line_error(petlbench_cli("plot", str(folder), "--kind", "rank"), "at least two methods")


def test_params_plot_draws_the_frontier(win):
    done = petlbench_cli("plot", str(win), "--published", "never")
    assert done.returncode == 0, done.stderr
    svg = open(done.stdout.split()[1]).read()
    assert "pareto-frontier" in svg
