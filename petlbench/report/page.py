"""`petlbench report RESULTS -o report.html`: the tables, plots and flags of a results folder on one page.

For a reader who would rather look than read. The page is self-contained: styles inline, figures as inline SVG,
no script, no font or image fetched, so it opens from a file, a mail attachment or an air-gapped cluster. Every
number comes from the same functions as `table`, `plot`, `plot --kind rank` and `table --per-class`.
"""
from __future__ import annotations

import io
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

import petlbench
from petlbench.errors import UserError
from petlbench.outputs import written_whole
from petlbench.report.marks import unstable_notes
from petlbench.report.plots import draw
from petlbench.report.ranks import rank_figure
from petlbench.report.samples import per_class_table
from petlbench.report.tables import describe, load_results, render_records, suite_parts

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222 }
h1 { font-size: 1.6em } h2 { border-bottom: 1px solid #ccc; margin-top: 2em } h3 { font-size: 1.05em }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0 } th, td { padding: 2px 6px; border: 1px solid #ddd }
th { background: #f3f3f3 } tr:nth-child(even) td { background: #fafafa }
.scroll { overflow-x: auto } ul.notes { font-size: 12px; color: #444 } figure { margin: 1em 0 }
figure svg { max-width: 100%; height: auto } .flag { color: #a40 } details { margin: .3em 0 }
"""


def write_report(results: str | Path, out: str | Path, suite: str | None = None) -> Path:
    """Render the page for every suite under `results` (or just `suite`) and write it whole to `out`."""
    records = load_results(results, suite)
    where = describe(results, suite)
    body = []
    for name, _, stats, comparison in suite_parts(records, where, "auto", every_method=True):
        mine = [r for r in records if r.get("suite") == name]
        body.append(suite_section(results, name, stats, comparison, mine, where, figure_index=len(body)))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>petlbench report: {escape(where)}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>petlbench report</h1>\n<p>{len(records)} run record(s) in {escape(where)}; written {stamp} by "
            f"petlbench {escape(petlbench.__version__)}. Test top-1 (%) at the last epoch, mean over seeds; "
            "params: trainable, excluding the head.</p>\n" + "\n".join(body) + "\n</body></html>\n")
    out = Path(out)
    with written_whole(out, "-o", "the report") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def suite_section(results, name: str, stats, comparison, records: list[dict], where: str, figure_index: int) -> str:
    parts = [f"<h2 id=\"suite-{escape(name)}\">Suite {escape(name)}</h2>",
             "<div class=\"scroll\">" + render_records(records, "html", where=where) + "</div>"]
    params = draw(name, stats, comparison.stats if comparison else None, comparison.spread if comparison else None,
                  comparison.short if comparison else None)
    parts.append(figure_html(params, f"p{figure_index}", "Accuracy vs trainable parameters: your methods (dashed "
                             "step line: the Pareto frontier) and the published rows with the spread across sources"))
    try:
        parts.append(figure_html(rank_figure(name, stats), f"r{figure_index}", "Average rank over tasks with "
                                 "Nemenyi's critical difference (methods joined by a bar do not differ)"))
    except UserError as exc:
        parts.append(f"<p>Rank plot: {escape(str(exc))}</p>")
    flags = unstable_notes(stats, records, "last")
    parts.append("<h3>Flagged tasks</h3>" + ("<ul>" + "".join(f"<li class=\"flag\">{escape(f)}</li>" for f in flags)
                 + "</ul>" if flags else "<p>None: no (method, task) spreads over seeds by a std above 2 points or "
                 "a range above 5.</p>"))
    parts.append("<h3>Per-class accuracy</h3>" + per_class_html(results, name, stats.tasks_present()))
    return "\n".join(parts)


def figure_html(figure: Figure, salt: str, caption: str) -> str:
    """Inline SVG; the salt keeps the element ids of several figures on one page apart (and the page stable)."""
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: not allowed inside HTML
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def per_class_html(results, suite: str, tasks: list[str]) -> str:
    """One collapsed block per task (the same numbers as `table --per-class TASK`), or why there are none."""
    blocks = []
    for task in tasks:
        try:
            frame = pd.read_csv(io.StringIO(per_class_table(results, task, suite, "csv")), keep_default_na=False)
        except UserError as exc:
            blocks.append(f"<details><summary>{escape(task)}: not available</summary><p>{escape(str(exc))}</p>"
                          "</details>")
            continue
        frame = frame.drop(columns=[c for c in ("suite", "task") if c in frame.columns])
        blocks.append(f"<details><summary>{escape(task)} ({len(frame)} rows)</summary><div class=\"scroll\">"
                      + frame.to_html(index=False, escape=True, border=0) + "</div></details>")
    return "\n".join(blocks)
