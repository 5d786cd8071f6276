"""Accuracy vs trainable parameters (log x), the figure PETL papers open with; PNG and SVG.

Uses the same numbers as `petlbench table` (petlbench.report.summary): y is the suite's headline mean (the
mean of group means for grouped suites such as VTAB-1k, else the mean over tasks), x the trainable
parameters excluding the head. A log axis has no zero, so zero-parameter methods (linear) are drawn
at a floor value that the axis label states. Drawn on the Agg canvas, without pyplot's global state.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from petlbench.errors import UserError
from petlbench.outputs import check_writable, written_whole
from petlbench.report.marks import frontier
from petlbench.report.summary import Stats
from petlbench.report.tables import describe, load_results, suite_parts

SUFFIXES = (".png", ".svg")


def plot(results: str | Path, suite: str | None = None, out: str | Path | None = None,
         published: str = "auto") -> list[Path]:
    """Write <stem>.png and <stem>.svg per suite (default stem RESULTS/<suite>_accuracy_vs_params); return paths."""
    records = load_results(results, suite)
    shown = "auto" if published == "all" else published  # one point per method; the spread bar shows the rest
    parts = list(suite_parts(records, describe(results, suite), shown, every_method=True))
    if out is not None and len(parts) > 1:
        names = ", ".join(name for name, *_ in parts)
        raise UserError(f"--out: {results} holds several suites ({names}); pick one with --suite")
    folder = Path(results) if Path(results).is_dir() else Path(results).parent
    written = []
    for name, info, stats, comparison in parts:
        stem = Path(out) if out is not None else folder / f"{slug(name)}_accuracy_vs_params"
        if stem.suffix.lower() in SUFFIXES:
            stem = stem.with_suffix("")
        figure = draw(name, stats, comparison.stats if comparison is not None else None,
                      comparison.spread if comparison is not None else None, comparison.short if comparison else None)
        check_writable(stem.parent, "--out", "plots")
        for suffix in SUFFIXES:
            path = stem.parent / (stem.name + suffix)
            with written_whole(path, "--out", "the plot") as tmp, rc_context({"svg.fonttype": "none"}):
                figure.savefig(tmp, dpi=150, bbox_inches="tight")  # SVG text stays text, editable for a paper
            written.append(path)
    return written


def slug(name: str) -> str:
    """A suite name as a file name: a record's `suite` field never chooses a folder (`../x`, `/tmp/x`)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(name)).lstrip(".") or "suite"


def points(stats: Stats, short: dict | None = None) -> list[tuple[str, float, float, float, bool]]:
    """(label, params M, headline mean, its std, complete) per row that has both numbers (`short`: row -> label)."""
    column = stats.info.headline
    several = short is None and stats.mean.index.get_level_values("backbone").nunique() > 1  # published: legend
    found = []
    for key in stats.mean.index:
        x, y = stats.params_m[key], stats.mean.loc[key, column]
        if not (math.isnan(x) or math.isnan(y)):
            label = (short or {}).get(key) or key[0].removeprefix("published: ")
            label += f" [{key[1].split(' (')[0]}]" if several else ""
            found.append((label, x, y, stats.std.loc[key, column], bool(stats.complete.loc[key, column])))
    return found


def draw(name: str, stats: Stats, published: Stats | None, spread: dict | None = None,
         short: dict | None = None) -> Figure:
    """The figure; `spread` (method -> (every source's rows, the partner row)) draws each method's range of
    published headline means across sources as a vertical bar at its parameter count."""
    ours, theirs = points(stats), points(published, short) if published is not None else []
    bars = spread_bars(spread or {}, stats.info.headline)
    positive = [x for _, x, *_ in ours + theirs if x > 0] + [x for _, x, _, _ in bars if x > 0]
    floor = 10 ** math.floor(math.log10(min(positive))) / 10 if positive else 1e-3
    figure = Figure(figsize=(7, 4.8))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for series, style, gid in ((ours, dict(marker="o", color="C0", label="yours"), "your-points"),
                               (theirs, dict(marker="s", markerfacecolor="none", color="C1",
                                             label=f"published ({published_backbone(published)})"), "published-points")):
        if not series:
            continue
        xs = [max(x, floor) for _, x, *_ in series]
        ys = [y for *_, y, _, _ in series]
        errors = [0.0 if math.isnan(s) else s for *_, s, _ in series]
        drawn = ax.errorbar(xs, ys, yerr=errors if any(errors) else None, linestyle="none", markersize=7, capsize=2,
                            **style)
        drawn.lines[0].set_gid(gid)  # an id in the SVG
        for (label, *_, complete), x, y in zip(series, xs, ys):
            ax.annotate(label + ("" if complete else " *"), (x, y), xytext=(4, 3), textcoords="offset points",
                        fontsize=8, color=style["color"])
    draw_frontier(ax, stats, floor)
    if bars:
        ax.vlines([max(x, floor) for _, x, _, _ in bars], [lo for *_, lo, _ in bars], [hi for *_, hi in bars],
                  colors="C1", alpha=0.45, linewidth=5, gid="published-spread",
                  label="published: range across sources")
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the text labels
    ax.set_xlabel(f"trainable parameters excluding the head (M, log scale; 0 drawn at {floor:g})")
    headline = stats.info.headline
    ax.set_ylabel(f"test top-1 (%), {headline}")
    ax.set_title(f"{name}: {headline} vs trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if not all(complete for *_, complete in ours):
        figure.text(0.01, 0.005, "* mean over the tasks that row has, not all the suite's tasks", fontsize=7)
    return figure


def draw_frontier(ax, stats: Stats, floor: float) -> None:
    """Your rows' Pareto frontier (as the table marks it) as a step line: what no other row beats on both axes."""
    front = sorted((max(stats.params_m[k], floor), stats.mean.loc[k, stats.info.headline])
                   for k in frontier(stats) or ())
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="C0", alpha=0.5, linewidth=1,
                linestyle="--", label="Pareto frontier (yours)", gid="pareto-frontier")


def published_backbone(published: Stats | None) -> str:
    if published is None or published.mean.empty:
        return ""
    return ", ".join(dict.fromkeys(key[1].removesuffix(" (published)") for key in published.mean.index))


def spread_bars(spread: dict, column: str) -> list[tuple[str, float, float, float]]:
    """(method, params M, lowest, highest) of each method whose complete published means differ across sources;
    x is the partner row's parameter count (else the median over the sources that give one)."""
    bars = []
    for method, (stats, partner) in spread.items():
        values = stats.mean[column].where(stats.complete[column]).dropna()
        params = stats.params_m.dropna()
        if len(values) < 2 or values.min() == values.max() or params.empty:
            continue
        x = stats.params_m.get(partner, float("nan")) if partner is not None else float("nan")
        bars.append((method, float(params.median() if math.isnan(x) else x), float(values.min()), float(values.max())))
    return bars
