"""Tables: run records -> pandas DataFrame -> method x task top-1 with mean and trainable params."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate

from petlbench.errors import UserError
from petlbench.records import load_records

FORMATS = ("md", "csv", "latex")


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per successful run, the columns a table needs."""
    rows = [{
        "suite": r["suite"], "task": r["task"], "task_index": r.get("task_index", 0), "group": r.get("task_group", ""),
        "method": r["method"]["label"], "backbone": f"{r['backbone']['name']} ({r['backbone']['weights']})",
        "seed": r["seed"], "top1": 100.0 * r["metrics"]["test_top1"],
        "trainable_excl_head": r["params"]["trainable_excl_head"], "backbone_params": r["params"]["backbone"],
    } for r in records if r.get("status") == "success" and r.get("protocol", {}).get("stage") != "search"]
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Method (x backbone) rows, task columns (mean over seeds), then mean, params and seeds."""
    tasks = list(dict.fromkeys(frame.sort_values("task_index", kind="stable")["task"]))  # the suite's order
    keys = ["method", "backbone"]
    per_task = frame.groupby(keys + ["task"], sort=False)["top1"]
    mean, std = per_task.mean().unstack("task"), per_task.std().unstack("task")
    table = mean.reindex(columns=tasks)
    cells = table.copy().astype(object)
    for row in table.index:
        for task in tasks:
            m, s = table.loc[row, task], std.loc[row, task] if task in std.columns else float("nan")
            cells.loc[row, task] = "" if pd.isna(m) else (f"{m:.1f}" if pd.isna(s) else f"{m:.1f}±{s:.1f}")
    complete = table.notna().all(axis=1)
    cells["mean"] = [f"{v:.1f}" + ("" if ok else "*") for v, ok in zip(table.mean(axis=1), complete)]
    by_row = frame.groupby(keys, sort=False)
    params = by_row["trainable_excl_head"].mean()
    cells["params (M)"] = (params / 1e6).map(lambda v: f"{v:.3f}")
    cells["% backbone"] = (100 * params / by_row["backbone_params"].mean()).map(lambda v: f"{v:.3f}")
    cells["seeds"] = by_row["seed"].nunique().astype(str)
    cells = cells.reset_index()
    if cells["backbone"].nunique() == 1:
        cells = cells.drop(columns="backbone")
    return cells


def render(results: str | Path, fmt: str = "md", suite: str | None = None) -> str:
    """The table text for every suite under the folder `results` (or just `suite`)."""
    if not Path(results).exists():
        raise UserError(f"{results}: no such results folder")
    records = load_records(results)
    if suite:
        records = [r for r in records if r.get("suite") == suite]
    return render_records(records, fmt, where=f"{results}" + (f" (suite {suite})" if suite else ""))


def render_records(records: list[dict], fmt: str = "md", where: str = "these runs") -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    frame = records_frame(records)
    failed = sum(r.get("status") != "success" for r in records)
    if frame.empty:
        raise UserError(f"{where}: no successful run records" + (f" ({failed} failed)" if failed else ""))
    parts, partial = [], False
    for name, part in frame.groupby("suite", sort=False):
        cells = summary(part)
        partial |= any(v.endswith("*") for v in cells["mean"])
        if fmt == "csv":
            parts.append(cells.assign(suite=name).to_csv(index=False))
            continue
        text = tabulate(cells, headers="keys", tablefmt="github" if fmt == "md" else "latex_booktabs",
                        showindex=False, disable_numparse=True)
        title = f"suite {name}: test top-1 (%), last epoch; params = trainable excluding the head, mean over tasks"
        parts.append((f"### {title}\n\n" if fmt == "md" else f"% {title}\n") + text)
    notes = ["* mean over the tasks that row has, not all of them"] if partial else []
    if failed:
        notes.append(f"{failed} failed run(s) are not shown; their records hold the error")
    return "\n\n".join(parts) + ("\n\n" + "\n".join(notes) if notes and fmt != "csv" else "") + "\n"
