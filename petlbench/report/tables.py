"""Tables: run records -> method x task top-1 with group and overall means, params, seeds, published rows.

The numbers come from petlbench.report.summary (definitions there and in the notes under every table);
this module only turns them into Markdown, CSV, booktabs LaTeX or HTML (for `petlbench report`).
"""
from __future__ import annotations

import sys
from html import escape as escape_html
from pathlib import Path

import pandas as pd
from tabulate import SEPARATING_LINE, tabulate

from petlbench.errors import UserError
from petlbench.report.marks import annotate
from petlbench.report import base2new, fewshot, reproduce
from petlbench.report.published import MODES, compare
from petlbench.records import current, load_records
from petlbench.report.summary import KEYS, Stats, aggregate, records_frame, suite_info
from petlbench.report.samples import ece_by_row
from petlbench.report.taskmetrics import metric_notes

FORMATS = ("md", "csv", "latex", "html")
REPORT_TITLE = {"last": "last epoch",
                "max-test": "MAX OVER EPOCHS, SELECTED ON THE TEST SET (only to compare with papers that report it)"}
LATEX_SPECIAL = str.maketrans({c: "\\" + c for c in "&%$#_{}"} | {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
                                                                   "^": r"\textasciicircum{}", "Δ": r"$\Delta$"})


def render(results: str | Path, fmt: str = "md", suite: str | None = None, published: str = "auto",
           report: str = "last", storage: bool = False, ece: bool = False, ppt: bool = False) -> str:
    """The table text for every suite under the folder `results` (or just `suite`)."""
    records = load_results(results, suite)
    if ece and report != "last":
        raise UserError("--ece: only with --report last (the samples are the last epoch's)")
    calibration = ece_by_row(results, suite) if ece else None
    return render_records(records, fmt, where=describe(results, suite), published=published, report=report,
                          storage=storage, ece=calibration, ppt=ppt)


def load_results(results: str | Path, suite: str | None) -> list[dict]:
    if not Path(results).exists():
        raise UserError(f"{results}: no such results folder")
    records = current(load_records(results, warn), warn)
    if suite:
        chosen = [r for r in records if r.get("suite") == suite]
        if not chosen and records:
            found = sorted({str(r.get("suite")) for r in records})
            raise UserError(f"{results}: no records of suite {suite!r}; suites here: {', '.join(found)}")
        records = chosen
    return records


def warn(message: str) -> None:
    print(f"petlbench: warning: {message}", file=sys.stderr, flush=True)


def describe(results: str | Path, suite: str | None) -> str:
    return f"{results}" + (f" (suite {suite})" if suite else "")


def suite_parts(records: list[dict], where: str, published: str = "auto", every_method: bool = False,
                report: str = "last"):
    """(suite name, SuiteInfo, user Stats, published Comparison or None) per suite in the records."""
    if published not in MODES:
        raise UserError(f"--published: expected one of {', '.join(MODES)}, got {published!r}")
    frame = records_frame(records, report)
    if frame.attrs.get("repeats"):
        warn(f"{frame.attrs['repeats']} run(s) repeat a (method, task, seed) with other settings under one label "
             "(a default changed between runs?); only the newest of each is shown, never averaged as seeds")
    failed = sum(r.get("status") != "success" for r in records)
    if frame.empty and report == "max-test":
        raise UserError(f"{where}: no run records a test curve; run with --train eval_every=N to record one")
    if frame.empty:
        raise UserError(f"{where}: no successful run records" + (f" ({failed} failed)" if failed else ""))
    for name, part in frame.groupby("suite", sort=False):
        info = suite_info(name, [r for r in records if r.get("suite") == name])
        stats = aggregate(part, info)
        yield name, info, stats, compare(part, stats, info, published, every_method)


def render_records(records: list[dict], fmt: str = "md", where: str = "these runs", published: str = "auto",
                   report: str = "last", storage: bool = False, ece: dict | None = None, ppt: bool = False) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    records, apart = base2new.split_off(records)  # base-to-new runs: a table of their own (base, new, HM)
    apart = base2new.render(apart, fmt)
    if apart and not any(r.get("status") == "success" for r in records):
        return apart + "\n"
    parts = []
    for name, info, stats, comparison in suite_parts(records, where, published, report=report):
        tasks = stats.tasks_present()  # published rows show the same task columns as yours
        blocks = [cells(stats, tasks, fmt, storage)]
        if comparison is not None and comparison.stats is not None:
            blocks += [cells(comparison.stats, tasks, fmt, storage), delta_cells(comparison.delta, tasks, stats, storage)]
            if comparison.shown_all:  # --published all: the spread across sources per method
                blocks.append(spread_cells(comparison.spread, tasks, stats, storage))
        marks = annotate(blocks, stats, comparison.stats if len(blocks) > 1 else None, records, report, fmt, ppt)
        if fmt == "latex":
            embolden(blocks[:2], [stats] + ([comparison.stats] if len(blocks) > 1 else []))
        few, few_notes = fewshot.beside(records, info, published)  # --shots K rows: published K-shot rows
        if few is not None:
            blocks.append(cells(few, tasks, fmt, storage).reindex(columns=blocks[0].columns, fill_value=""))
        if ece is not None:  # the user's rows: their ECE (%); published and difference rows have none
            for i, block in enumerate(blocks):
                block[ECE] = [ece_cell(ece.get((name, *row))) for row in stats.mean.index] if i == 0 else ""
        blocks = [b for b in blocks if not b.empty]
        several = stats.mean.index.get_level_values("backbone").nunique() > 1
        blocks = [b if several else b.drop(columns="backbone") for b in blocks]
        notes = table_notes(info, stats, comparison) + few_notes + marks + ([ECE_NOTE] if ece is not None else [])
        notes += metric_notes([r for r in records if r.get("suite") == name])  # VOC's mAP, ImageNet-A/-R's 200 classes
        if fmt == "csv":
            parts.append(pd.concat(blocks).assign(suite=name).to_csv(index=False))
            continue
        title = f"suite {name}: test top-1 (%), {REPORT_TITLE[report]}, mean over seeds; params = trainable excluding the head"
        if fmt in ("md", "html"):
            text = tabulate(pd.concat(blocks), headers="keys", tablefmt="github" if fmt == "md" else "html",
                            showindex=False, disable_numparse=True)  # html: every cell escaped
            parts.append(f"### {title}\n\n{text}\n\n" + "\n".join(notes) if fmt == "md" else
                         f"<h3>{escape_html(title)}</h3>\n{text}\n<ul class=\"notes\">\n"
                         + "".join(f"<li>{escape_html(n)}</li>\n" for n in notes) + "</ul>")
        else:
            parts.append(f"% {title}\n" + latex(blocks) + "\n" + "\n".join(f"% {n}" for n in notes))
    failed = sum(r.get("status") != "success" for r in records)
    no_curve = sum(r.get("status") == "success" and "test_curve" not in r["metrics"] for r in records
                   if r.get("protocol", {}).get("stage") != "search") if report == "max-test" else 0
    for count, note in ((failed, "failed run(s) are not shown; their records hold the error"),
                        (no_curve, "run(s) without a test curve (--train eval_every=N) are not shown")):
        if count and fmt != "csv":
            parts.append(f"% {count} {note}" if fmt == "latex" else f"<p>{count} {note}</p>" if fmt == "html"
                         else f"{count} {note}")
    parts += [text for text in [reproduce.render(records, fmt, report)] if text]  # --protocol paper vs its source
    parts += [apart] if apart else []
    return "\n\n".join(parts) + "\n"


def number(mean: float, std: float, fmt: str) -> str:
    if pd.isna(mean):
        return ""
    pm = "$\\pm$" if fmt == "latex" else "±"
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f}{pm}{std:.1f}"


STORAGE = "storage/task (KB)"
ECE = "ECE (%)"
ECE_NOTE = ("ECE (%): expected calibration error of the top-1 probability (15 equal-width bins), mean over tasks of "
            "the mean over seeds, from the runs' samples; * some runs of the row kept none: the mean over those that did")


def ece_cell(found: tuple[float, bool] | None) -> str:
    return "" if found is None else f"{found[0]:.1f}" + ("" if found[1] else "*")


def cells(stats: Stats, tasks: list[str], fmt: str, storage: bool = False) -> pd.DataFrame:
    """Text cells: `tasks` (those your rows have, suite order), the means (`*`: incomplete), params, seeds."""
    aggregates = stats.info.aggregates()
    out = pd.DataFrame(index=stats.mean.index)
    for col in tasks + aggregates:
        marks = ["" if ok or col in tasks else "*" for ok in stats.complete[col]]
        out[col] = [number(m, s, fmt) + (mark if number(m, s, fmt) else "")
                    for m, s, mark in zip(stats.mean[col], stats.std[col], marks)]
    out["params (M)"] = [compact(v) for v in stats.params_m]
    out["% backbone"] = [compact(v) for v in stats.percent]
    if storage:
        out[STORAGE] = ["" if pd.isna(v) else f"{v:,.1f}" for v in stats.storage_kb]
    out["seeds"] = stats.seeds
    return out.reset_index()


def delta_cells(delta: pd.DataFrame, tasks: list[str], user: Stats, storage: bool = False) -> pd.DataFrame:
    """Signed differences (yours minus published) for the task and mean columns; nothing for params."""
    columns = tasks + user.info.aggregates()
    out = pd.DataFrame({c: [f"{v:+.1f}" if pd.notna(v) else "" for v in delta[c]] for c in columns}, index=delta.index)
    for col in ("params (M)", "% backbone", *([STORAGE] if storage else []), "seeds"):
        out[col] = ""
    return out.reset_index()


def spread_cells(spread: dict, tasks: list[str], user: Stats, storage: bool = False) -> pd.DataFrame:
    """Per method, 'lowest-highest' of its published rows across sources (means only from complete rows)."""
    columns = tasks + user.info.aggregates()
    rows = []
    for method, (stats, _) in spread.items():
        values = stats.mean[columns].where(stats.complete[columns])
        low, high = values.min(), values.max()
        rows.append({"method": f"spread: {method} ({len(values)} rows)", "backbone": "(published)"}
                    | {c: f"{low[c]:.1f}-{high[c]:.1f}" if pd.notna(low[c]) else "" for c in columns}
                    | {c: "" for c in ("params (M)", "% backbone", *([STORAGE] if storage else []), "seeds")})
    return pd.DataFrame(rows)


def embolden(blocks: list[pd.DataFrame], stats: list[Stats]) -> None:
    """LaTeX: the best value of each accuracy column (complete means only; ties all bold), in place."""
    columns = stats[0].tasks_present() + stats[0].info.aggregates()
    for col in columns:
        values = [s.mean[col].where(s.complete[col]).round(1).to_numpy() for s in stats]
        best = max((v for vs in values for v in vs if pd.notna(v)), default=None)
        for block, vs in zip(blocks, values):
            for i, v in enumerate(vs):
                if best is not None and v == best:
                    block.loc[i, col] = f"\\textbf{{{block.loc[i, col]}}}"


def latex(blocks: list[pd.DataFrame]) -> str:
    """booktabs tabular; blocks (yours, published, differences) separated by \\midrule."""
    rows = []
    for block in blocks:
        if rows:
            rows.append([SEPARATING_LINE])
        rows += [[escape(v) if c in KEYS else str(v) for c, v in row.items()] for _, row in block.iterrows()]
    columns = list(blocks[0].columns)
    text = tabulate(rows, headers=[escape(c) for c in columns], tablefmt="latex_raw", disable_numparse=True,
                    colalign=["left" if c in KEYS else "right" for c in columns])
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip() == "\\hline"]
    for i in rules:
        lines[i] = "\\midrule"
    lines[rules[0]], lines[rules[-1]] = "\\toprule", "\\bottomrule"
    return "\n".join(lines)


def escape(text: str) -> str:
    return str(text).translate(LATEX_SPECIAL)


def table_notes(info, stats: Stats, comparison) -> list[str]:
    notes = ["cells: mean over seeds; ± is the sample std over seeds (n-1) where a row has two or more"]
    if info.grouped:
        notes.append("mean <group>: mean of the per-task means of that group; mean (groups): mean of the "
                     f"{len(info.groups)} group means; mean (tasks): mean of all per-task means; the ± of a mean "
                     "is the std over seeds of that mean computed per seed")
    aggregates = stats.complete[info.aggregates()]
    if not aggregates.all().all():
        notes.append(f"* the row lacks some of the suite's {len(info.tasks)} tasks: the mean over the tasks it "
                     "has (empty: none of them), not comparable with complete means")
    if info.note:
        notes.append(info.note)
    if comparison is not None:
        notes += comparison.notes
    return notes


def compact(value: float) -> str:
    """3 decimals, but 2 significant digits below 0.01, so a tiny model's 0.00019M does not read as 0."""
    if pd.isna(value):
        return ""
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"
