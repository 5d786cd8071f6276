"""Tables from hand-written records, checked against numbers computed by hand."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from petlbench.errors import UserError
from petlbench.records import SCHEMA, write_atomic
from petlbench.table import render


def record(task, index, method, seed, top1, params, status="success"):
    return {"schema": SCHEMA, "run_id": f"{task}-{method}-{seed}", "status": status, "suite": "mini",
            "task": task, "task_index": index, "task_group": "natural", "seed": seed,
            "method": {"name": method.split(":")[0], "label": method},
            "backbone": {"name": "vit_b", "weights": "random-init"},
            "metrics": {"test_top1": top1}, "params": {"trainable_excl_head": params, "backbone": 1_000_000}}


@pytest.fixture
def results(tmp_path):
    rows = [
        record("b_task", 1, "linear", 0, 0.50, 0), record("b_task", 1, "linear", 1, 0.60, 0),
        record("a_task", 0, "linear", 0, 0.80, 0), record("a_task", 0, "linear", 1, 0.90, 0),
        record("a_task", 0, "vpt_deep:tokens=5", 0, 0.70, 3000), record("b_task", 1, "vpt_deep:tokens=5", 0, 0.40, 5000),
        record("b_task", 1, "bitfit", 0, 0.99, 100, status="failed"),
    ]
    for i, r in enumerate(rows):
        if r["status"] == "failed":
            r.pop("metrics")
        write_atomic(tmp_path / "mini" / f"{i}.json", r)
    (tmp_path / "mini" / "notes.json").write_text("[1, 2]")  # not a record: ignored
    return tmp_path


def test_csv_numbers_by_hand(results):
    frame = pd.read_csv(io.StringIO(render(results, "csv")), dtype=str).set_index("method")
    assert list(frame.columns[:2]) == ["a_task", "b_task"], "columns follow the suite's task order"
    assert frame.loc["linear", "a_task"] == "85.0±7.1"  # mean 85, sample std of (80, 90) = 7.07
    assert frame.loc["linear", "b_task"] == "55.0±7.1"
    assert frame.loc["linear", "mean"] == "70.0"
    assert frame.loc["linear", "seeds"] == "2"
    assert frame.loc["vpt_deep:tokens=5", "a_task"] == "70.0"
    assert frame.loc["vpt_deep:tokens=5", "mean"] == "55.0"
    assert frame.loc["vpt_deep:tokens=5", "params (M)"] == "0.004"  # (3000 + 5000) / 2
    assert frame.loc["vpt_deep:tokens=5", "% backbone"] == "0.400"
    assert "bitfit" not in frame.index, "failed runs are not tabulated"


def test_markdown_and_latex_mention_failures(results):
    md = render(results, "md")
    assert "| linear" in md and "1 failed run(s) are not shown" in md
    latex = render(results, "latex")
    assert "\\toprule" in latex and "85.0±7.1" in latex


def test_incomplete_row_is_marked(tmp_path):
    write_atomic(tmp_path / "a.json", record("a_task", 0, "linear", 0, 0.5, 0))
    write_atomic(tmp_path / "b.json", record("b_task", 1, "full", 0, 0.7, 10))
    md = render(tmp_path, "md")
    assert "50.0*" in md and "mean over the tasks that row has" in md


def test_table_errors(tmp_path):
    with pytest.raises(UserError, match="no such results folder"):
        render(tmp_path / "nope")
    with pytest.raises(UserError, match="no successful run records"):
        render(tmp_path)
    write_atomic(tmp_path / "a.json", record("a_task", 0, "linear", 0, 0.5, 0))
    with pytest.raises(UserError, match="--format"):
        render(tmp_path, "html")
