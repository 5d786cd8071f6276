"""What a table adds beside its means so a reader can tell a win from noise: the average rank over tasks, the
Pareto frontier of accuracy vs trainable parameters, V-PETL's PPT on request, and unstable (method, task) cells.

Works on the text blocks `petlbench.report.tables` builds (yours, published, differences) and on the same numbers
(`Stats`); the definitions are printed as notes under the table.
"""
from __future__ import annotations

import math

import pandas as pd

from petlbench.report.stats import (ALPHA, HALF_WIDTH, LEVEL, UNSTABLE_RANGE, UNSTABLE_STD, critical_difference,
                                    friedman, pareto_front, ppt, rank_table, seeds_needed, unstable)
from petlbench.report.summary import GROUPS_MEAN, KEYS, TASKS_MEAN, Stats, records_frame

RANK, PPT, PARETO = "avg rank", "PPT", "pareto"
FRONTIER = "◆"  # beside the method name of a row on the frontier (Markdown, LaTeX); CSV gets a `pareto` column


def annotate(blocks: list[pd.DataFrame], stats: Stats, published: Stats | None, records: list[dict], report: str,
             fmt: str, with_ppt: bool = False) -> list[str]:
    """Add the rank (and PPT) columns and the frontier mark to `blocks` in place; return the notes they need."""
    notes = []
    ranks = average_ranks(stats)
    if ranks is not None:
        mean_rank, n_tasks = ranks
        _column(blocks, RANK, [f"{v:.2f}" for v in mean_rank])
        chi2, p = friedman(rank_table(stats.mean[stats.tasks_present()]))
        cd = critical_difference(len(mean_rank), n_tasks)
        notes.append(f"{RANK}: per task, each of your {len(mean_rank)} rows ranked by mean top-1 over seeds (1 = best, "
                     f"ties averaged), averaged over the {n_tasks} task(s) every row has; Friedman chi2 = {chi2:.2f}, "
                     f"p = {p:.3g}; Nemenyi critical difference (alpha {ALPHA}) = {cd:.2f}: two rows whose average "
                     "ranks differ by more differ (`petlbench plot --kind rank` draws it)")
    front = frontier(stats)
    if front is not None:
        notes.append(mark_frontier(blocks[0], stats, front, fmt))
    if with_ppt:
        notes.append(add_ppt(blocks, stats, published))
    return notes + unstable_notes(stats, records, report)


def _column(blocks: list[pd.DataFrame], name: str, values: list[str], published: list[str] | None = None) -> None:
    """A column on your block, and on the published block (or empty) and the differences (empty)."""
    blocks[0][name] = values
    for i, block in enumerate(blocks[1:], start=1):
        block[name] = published if i == 1 and published is not None else ""


def average_ranks(stats: Stats) -> tuple[list[float], int] | None:
    """(average rank per row in table order, tasks ranked over), or None with fewer than 2 rows or no shared task."""
    ranks = rank_table(stats.mean[stats.tasks_present()])
    if len(ranks.index) < 2 or ranks.shape[1] == 0:
        return None
    return list(ranks.mean(axis=1)), ranks.shape[1]


def frontier(stats: Stats) -> set | None:
    """Rows (index keys) on the frontier of the headline mean vs trainable params, among the rows that have every
    task the table shows (their means are over the same tasks); None when fewer than two rows can be compared."""
    column = stats.info.headline
    shown = stats.mean[stats.tasks_present()].notna().all(axis=1)
    points = {key: (stats.params_m[key], stats.mean.loc[key, column]) for key in stats.mean.index if shown[key]}
    if len([v for v in points.values() if not any(map(math.isnan, v))]) < 2:
        return None
    return pareto_front(points)


def mark_frontier(block: pd.DataFrame, stats: Stats, front: set, fmt: str) -> str:
    on = [key in front for key in stats.mean.index]
    if fmt == "csv":
        block[PARETO] = on
    else:
        block["method"] = [f"{m} {FRONTIER}" if flag else m for m, flag in zip(block["method"], on)]
    where = "the `pareto` column is true" if fmt == "csv" else f"{FRONTIER} beside the method"
    return (f"{where}: on the Pareto frontier of {stats.info.headline} vs trainable parameters among your rows: no "
            "other row has at least its accuracy with at most its parameters (one of them strictly); rows lacking a "
            "task the table shows are left out")


def ppt_column(stats: Stats) -> str:
    """V-PETL's PPT uses the mean over all tasks (its VTAB `Mean` is the 19-task mean)."""
    return TASKS_MEAN if stats.info.headline == GROUPS_MEAN else stats.info.headline


def add_ppt(blocks: list[pd.DataFrame], stats: Stats, published: Stats | None) -> str:
    column = ppt_column(stats)

    def values(s: Stats) -> list[str]:
        return ["" if math.isnan(s.mean.loc[k, column]) or math.isnan(s.params_m[k]) else
                f"{ppt(s.mean.loc[k, column], 1e6 * s.params_m[k]):.3f}" + ("" if s.complete.loc[k, column] else "*")
                for k in s.mean.index]
    _column(blocks, PPT, values(stats), values(published) if published is not None and len(blocks) > 1 else None)
    return (f"{PPT} (V-PETL Bench's performance-parameter trade-off): {column} / 100 x exp(-log10(P / 1e7 + 1)), "
            "P = trainable parameters excluding the head; * from an incomplete mean")


def unstable_notes(stats: Stats, records: list[dict], report: str) -> list[str]:
    """One footnote per (row, task) whose seeds spread too far, with the seeds that would narrow its mean."""
    frame = records_frame([r for r in records if r.get("suite") == stats.info.name], report)
    if frame.empty:
        return []
    frame["backbone"] = frame["backbone_name"] + " (" + frame["weights"] + ")"
    order = {key: i for i, key in enumerate(stats.mean.index)}
    tasks = {t: i for i, t in enumerate(stats.info.tasks)}
    found = []
    for (method, backbone, task), part in frame.groupby(KEYS + ["task"], sort=False):
        values = part.groupby("seed")["top1"].mean()
        if unstable(values):
            std, spread = values.std(ddof=1), values.max() - values.min()
            found.append(((order.get((method, backbone), 0), tasks.get(task, 0)),
                          f"! {method} on {task}: {values.min():.1f} to {values.max():.1f} over {len(values)} seeds "
                          f"(std {std:.1f}, range {spread:.1f}); about {seeds_needed(std)} seeds would narrow the "
                          f"{LEVEL:.0%} interval of its mean to ±{HALF_WIDTH:g} point"))
    if not found:
        return []
    head = (f"unstable (method, task) cells, each listed below with !: seed std above {UNSTABLE_STD:g} points or range above {UNSTABLE_RANGE:g}; the "
            f"seeds needed solve n = (t s / {HALF_WIDTH:g})^2, s the seeds' std, t Student's {(1 + LEVEL) / 2:.1%} "
            "quantile at n-1 degrees of freedom")
    return [head] + [text for _, text in sorted(found)]
