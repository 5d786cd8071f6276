"""`petlbench plot --kind rank`: the critical-difference diagram of Demšar (JMLR 2006) for every method of a table.

Average rank over tasks (rank per task by mean top-1 over seeds, 1 = best, ties averaged; only tasks every method
has), the Friedman test of equal ranks, and Nemenyi's critical difference: methods joined by a bar do not differ
at alpha 0.05. The numbers are those of the table's `avg rank` column (petlbench.report.stats).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from petlbench.errors import UserError
from petlbench.outputs import check_writable, written_whole
from petlbench.report.plots import SUFFIXES, slug
from petlbench.report.stats import ALPHA, critical_difference, friedman, rank_table
from petlbench.report.tables import describe, load_results, suite_parts


def plot_ranks(results: str | Path, suite: str | None = None, out: str | Path | None = None) -> list[Path]:
    """Write <stem>.png and <stem>.svg per suite (default stem RESULTS/<suite>_rank); return the paths."""
    records = load_results(results, suite)
    parts = list(suite_parts(records, describe(results, suite), "never"))
    if out is not None and len(parts) > 1:
        raise UserError(f"--out: {results} holds several suites ({', '.join(p[0] for p in parts)}); pick one with --suite")
    folder = Path(results) if Path(results).is_dir() else Path(results).parent
    written = []
    for name, _, stats, _ in parts:
        figure = rank_figure(name, stats)
        stem = Path(out) if out is not None else folder / f"{slug(name)}_rank"
        stem = stem.with_suffix("") if stem.suffix.lower() in SUFFIXES else stem
        check_writable(stem.parent, "--out", "plots")
        for suffix in SUFFIXES:
            path = stem.parent / (stem.name + suffix)
            with written_whole(path, "--out", "the plot") as tmp, rc_context({"svg.fonttype": "none"}):
                figure.savefig(tmp, dpi=150, bbox_inches="tight")
            written.append(path)
    return written


def rank_figure(name: str, stats) -> Figure:
    """The critical-difference diagram of one suite's rows (refused in one line below two rows sharing a task)."""
    table = rank_table(stats.mean[stats.tasks_present()])
    if len(table.index) < 2 or table.shape[1] == 0:
        raise UserError(f"suite {name}: a rank plot needs at least two methods that share a task "
                        f"({len(stats.mean.index)} method row(s), {table.shape[1]} task(s) every row has)")
    several = table.index.get_level_values("backbone").nunique() > 1
    labels = [m + (f" [{b.split(' (')[0]}]" if several else "") for m, b in table.index]
    return draw(name, pd.Series(table.mean(axis=1).to_numpy(), index=labels), table)


def cliques(ranks: list[float], cd: float) -> list[tuple[int, int]]:
    """(first, last) indexes into sorted `ranks` of the maximal runs whose spread is at most `cd`, two or more long."""
    found = []
    for i in range(len(ranks)):
        j = max(j for j in range(i, len(ranks)) if ranks[j] - ranks[i] <= cd)
        if j > i and not any(a <= i and j <= b for a, b in found):
            found.append((i, j))
    return found


def draw(name: str, average: pd.Series, table: pd.DataFrame) -> Figure:
    """Rank axis on top (1 = best, left); each method hangs from its average rank to its name; bars join methods
    whose ranks differ by no more than the critical difference."""
    k, n = table.shape
    chi2, p = friedman(table)
    cd = critical_difference(k, n)
    average = average.sort_values(kind="stable")
    ranks, labels = list(average), list(average.index)
    groups = cliques(ranks, cd)
    half = (k + 1) // 2
    levels = [0.55 + 0.12 * len(groups) + 0.32 * i for i in range(half)]
    figure = Figure(figsize=(7.5, 1.6 + 0.32 * half))
    FigureCanvasAgg(figure)
    ax = figure.add_axes([0.02, 0.02, 0.96, 0.78])
    margin = max(1.0, 0.45 * k)
    ax.set_xlim(1 - margin, k + margin)
    ax.set_ylim(levels[-1] + 0.3, -0.9)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", linewidth=1)
    for r in range(1, k + 1):
        ax.vlines(r, -0.08, 0, color="black", linewidth=1)
        ax.text(r, -0.15, str(r), ha="center", va="bottom", fontsize=9)
    ax.hlines(-0.6, 1, 1 + cd, color="black", linewidth=1.5, gid="critical-difference")
    ax.text(1 + cd / 2, -0.65, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    for c, (i, j) in enumerate(groups):
        ax.hlines(0.25 + 0.12 * c, ranks[i] - 0.04, ranks[j] + 0.04, color="black", linewidth=3, gid=f"clique-{c}")
    for i, (rank, label) in enumerate(zip(ranks, labels)):
        left = i < half
        y = levels[i] if left else levels[k - 1 - i]
        end = 1 - margin * 0.15 if left else k + margin * 0.15
        ax.plot([rank, rank, end], [0, y, y], color="C0", linewidth=1)
        ax.text(end + (-0.05 if left else 0.05), y, f"{label} ({rank:.2f})", ha="right" if left else "left",
                va="center", fontsize=8, gid=f"method-{i}")
    verdict = ("" if p < ALPHA else f"; Friedman does not reject equal ranks at {ALPHA}: no difference is established")
    figure.suptitle(f"{name}: average rank over {n} task(s), 1 = best; Friedman chi2 = {chi2:.2f}, p = {p:.3g}; "
                    f"bars: no difference (Nemenyi, alpha {ALPHA}){verdict}", fontsize=8, wrap=True)
    return figure
