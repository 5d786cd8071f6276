"""Did a `--protocol paper` run reproduce its source? Per task, yours minus the number the source reported for the
same settings (held in each record's `paper.settings.reported`), and one line per method and source:
"reproduced within X points on N of M tasks" (X = 1 point), with the largest difference.

Last-epoch runs are compared with the source's last-epoch number (`top1`); `--report max-test` compares the
best test epoch with the source's best test epoch (`best_top1`), both selected on test.
"""
from __future__ import annotations

from collections import defaultdict

from tabulate import tabulate

WITHIN = 1.0  # points: a task is "reproduced" when |yours - source| <= this


def paper_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "success" and (r.get("protocol") or {}).get("name") == "paper"
            and isinstance(r.get("paper"), dict)]


def differences(records: list[dict], report: str = "last") -> dict[tuple, dict[str, tuple[float, float]]]:
    """(suite, method label, source) -> task -> (yours, the source's), yours the mean over seeds (%)."""
    key = "best_top1" if report == "max-test" else "top1"
    runs: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    theirs: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in sorted(paper_records(records), key=lambda r: r.get("task_index", 0)):
        paper = r["paper"]
        reported = (paper.get("settings") or {}).get("reported") or {}
        value = r["metrics"].get("test_top1")
        if report == "max-test":
            curve = r["metrics"].get("test_curve")
            value = max(v for _, v in curve) if curve else None
        if reported.get(key) is None or value is None:
            continue
        row = (r["suite"], (paper.get("settings") or {}).get("method") or r["method"]["label"], paper.get("source"))
        runs[row][r["task"]].append(100.0 * value)
        theirs[row][r["task"]] = float(reported[key])
    return {row: {t: (sum(v) / len(v), theirs[row][t]) for t, v in tasks.items()} for row, tasks in runs.items()}


def summary_line(label: str, tasks: dict[str, tuple[float, float]]) -> str:
    deltas = {t: ours - src for t, (ours, src) in tasks.items()}
    worst = max(deltas, key=lambda t: abs(deltas[t]))
    within = sum(abs(d) <= WITHIN for d in deltas.values())
    return (f"{label}: reproduced within {WITHIN:g} point on {within} of {len(deltas)} tasks; max |Δ| "
            f"{abs(deltas[worst]):.1f} ({worst}: {tasks[worst][0]:.1f} vs {tasks[worst][1]:.1f}), mean Δ "
            f"{sum(deltas.values()) / len(deltas):+.1f}")


def render(records: list[dict], fmt: str = "md", report: str = "last") -> str:
    """The reproduction block under a table ('' when no record ran under --protocol paper)."""
    found = differences(records, report)
    if not found or fmt == "csv":
        return ""
    what = "best test epoch vs the source's best test epoch" if report == "max-test" else \
        "last epoch vs the source's last epoch"
    parts = []
    for suite in dict.fromkeys(s for s, _, _ in found):
        rows = {k: v for k, v in found.items() if k[0] == suite}
        tasks = list(dict.fromkeys(t for v in rows.values() for t in v))
        table = [[f"{m} [{src}]", *[f"{v[t][0] - v[t][1]:+.1f}" if t in v else "" for t in tasks]]
                 for (_, m, src), v in rows.items()]
        lines = [summary_line(f"{m} [{src}]", v) for (_, m, src), v in rows.items()]
        title = f"suite {suite}: reproduction, yours minus the source's own number with the same settings ({what})"
        if fmt == "latex":
            parts.append("\n".join(f"% {line}" for line in [title, *lines]))
            continue
        text = tabulate(table, headers=["Δ (points)", *tasks], tablefmt="github", disable_numparse=True)
        parts.append(f"### {title}\n\n{text}\n\n" + "\n".join(lines))
    return "\n\n".join(parts)
