"""The base-to-new table (`--base-to-new` runs, petlbench.data.classsplit): base, new and their harmonic mean.

Base-to-new runs are never mixed with ordinary runs: `table` shows them apart, one table per suite, a row per
method and task (CoCoOp's Table 1 layout) and an `average` row per method over the tasks it has. Per cell, base and
new are means over seeds and HM is the harmonic mean of those means; the average row's HM is that of the averaged
base and new, as CoCoOp computes its "Average over 11 datasets" (80.47 / 71.69 -> 75.83). Published base-to-new rows
(rows of results/published/published_fewshot.csv with `setting` = base-to-new and `base_top1`, `new_top1`) are shown
beside runs of the same dataset, backbone and shots when the file holds any (it holds none today).
"""
from __future__ import annotations

from html import escape

import pandas as pd
from tabulate import tabulate

from petlbench.data.classsplit import harmonic_mean
from petlbench.report import fewshot
from petlbench.report.published import match
from petlbench.report.summary import suite_info

SETTING = "base-to-new"  # the published file's `setting` value for base-to-new rows
COLUMNS = ["method", "backbone", "task", "base", "new", "HM", "seeds"]
NOTE = ("base-to-new (CoCoOp): trained on the base half of each task's classes (the first ceil(C/2) labels); base = "
        "test top-1 over the base classes, new = test top-1 over the other classes with a classifier over them only, "
        "built from their names; HM = 2 base new / (base + new) of the means over seeds; average: over tasks, HM of "
        "the averages")
TABLEFMT = {"md": "github", "html": "html", "latex": "latex_booktabs"}


def is_base_to_new(record: dict) -> bool:
    return bool((record.get("protocol") or {}).get("base_to_new"))


def split_off(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(ordinary records, base-to-new records)."""
    return [r for r in records if not is_base_to_new(r)], [r for r in records if is_base_to_new(r)]


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per successful final base-to-new run: its base, new (top-1 %) and labels."""
    rows = []
    for r in records:
        metrics = r.get("metrics") or {}
        final = (r.get("protocol") or {}).get("stage") != "search"
        if r.get("status") != "success" or not final or "new_top1" not in metrics:
            continue
        shots = (r.get("protocol") or {}).get("shots")
        rows.append({"suite": r["suite"], "task": r["task"], "seed": r["seed"],
                     "method": r["method"]["label"] + (f" [{shots}-shot]" if shots else ""),
                     "backbone": f"{r['backbone']['name']} ({r['backbone']['weights']})",
                     "base": 100.0 * metrics["base_top1"], "new": 100.0 * metrics["new_top1"]})
    return pd.DataFrame(rows, columns=["suite", "task", "seed", "method", "backbone", "base", "new"])


def suite_table(frame: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Rows per (method, backbone): each task's mean base and new over seeds with their HM, then the average."""
    order = {t: i for i, t in enumerate(tasks)}
    cells = (frame.groupby(["method", "backbone", "task"], sort=False)
             .agg(base=("base", "mean"), new=("new", "mean"), seeds=("seed", "nunique")).reset_index())
    cells = cells.sort_values(["method", "backbone", "task"], key=lambda c: c.map(order) if c.name == "task" else c,
                              kind="stable")
    rows = []
    for (method, backbone), part in cells.groupby(["method", "backbone"], sort=False):
        for _, c in part.iterrows():
            rows.append([method, backbone, c["task"], c["base"], c["new"], harmonic_mean(c["base"], c["new"]),
                         str(int(c["seeds"]))])
        if len(part) > 1:
            base, new = part["base"].mean(), part["new"].mean()
            rows.append([method, backbone, f"average ({len(part)} tasks)", base, new, harmonic_mean(base, new), ""])
    return pd.DataFrame(rows, columns=COLUMNS)


def published_rows(records: list[dict], info, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Published base-to-new rows (`table`, default the published few-shot file) of the datasets, backbones and shots
    of these runs; none when the file has none."""
    table = fewshot.load() if table is None else table
    if table is None or "setting" not in table or not {"base_top1", "new_top1"} <= set(table.columns):
        return pd.DataFrame(columns=COLUMNS)
    task_of = {t: t for t in info.tasks}
    if info.suite is not None:
        task_of.update({a: t.name for t in info.suite.tasks for a in t.aliases})
    wanted = {(r["task"], fewshot.timm_name(r["backbone"]), r["backbone"].get("weights") or "",
               (r.get("protocol") or {}).get("shots") or 0) for r in records}
    rows = []
    for _, row in table[table["setting"] == SETTING].iterrows():
        task = task_of.get(row["dataset"])
        if any(w[0] == task and match(w[1], w[2], row["backbone"]) and int(row["shots"]) == w[3] for w in wanted):
            base, new = float(row["base_top1"]), float(row["new_top1"])
            label = f"published: {fewshot.METHOD_NAMES.get(row['method'], row['method'])} [{row.get('source_key')}]"
            rows.append([label, f"{row['backbone']} (published)", task, base, new, harmonic_mean(base, new), ""])
    return pd.DataFrame(rows, columns=COLUMNS)


def render(records: list[dict], fmt: str = "md") -> str:
    """The base-to-new tables of these records ('' when none is a finished base-to-new run)."""
    frame = runs_frame(records)
    parts = []
    for name, part in frame.groupby("suite", sort=False):
        suite_records = [r for r in records if r.get("suite") == name]
        info = suite_info(name, suite_records)
        table = pd.concat([t for t in (suite_table(part, info.tasks), published_rows(suite_records, info))
                           if not t.empty])
        if table["backbone"].nunique() == 1:
            table = table.drop(columns="backbone")
        for column in ("base", "new", "HM"):
            table[column] = table[column].map(lambda v: f"{v:.1f}")
        title = f"suite {name}: base-to-new, test top-1 (%), mean over seeds"
        if fmt == "csv":
            parts.append(table.assign(suite=name).to_csv(index=False))
            continue
        text = tabulate(table, headers="keys", tablefmt=TABLEFMT[fmt], showindex=False, disable_numparse=True)
        if fmt == "md":
            parts.append(f"### {title}\n\n{text}\n\n{NOTE}")
        elif fmt == "html":
            parts.append(f"<h3>{escape(title)}</h3>\n{text}\n<p>{escape(NOTE)}</p>")
        else:
            parts.append(f"% {title}\n{text}\n% {NOTE}")
    return "\n\n".join(parts)
