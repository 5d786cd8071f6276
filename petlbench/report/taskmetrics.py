"""The number a task's cell shows: top-1, or the task's own named metric where its record says so.

A multi-label task (ELEVATER's voc-2007-classification) records `protocol.metric = "map11"` and its score as
`metrics.test_map11` (petlbench.engine.multilabel); its cell shows that, as ELEVATER's tables show each dataset's own
metric, and a note under the table says which columns are not top-1. ImageNet-A/-R's top-1 is among their 200
classes (`metrics.scored_classes`), also said in a note.
"""
from __future__ import annotations

NAMES = {"map11": "11-point mAP (ELEVATER's metric for multi-label VOC 2007)"}


def task_metric(record: dict) -> float:
    """The reported fraction: `metrics.test_<metric>` for a task with a named metric, else `metrics.test_top1`."""
    metric = (record.get("protocol") or {}).get("metric", "top1")
    return record["metrics"].get(f"test_{metric}", record["metrics"]["test_top1"]) if metric in NAMES else \
        record["metrics"]["test_top1"]


def metric_notes(records: list[dict]) -> list[str]:
    """One note per task whose cells are not plain top-1 over all its classes."""
    named, scored = {}, {}
    for r in records:
        if r.get("status") != "success":
            continue
        metric = (r.get("protocol") or {}).get("metric", "top1")
        if metric in NAMES and f"test_{metric}" in r.get("metrics", {}):
            named.setdefault(r["task"], NAMES[metric])
        if (r.get("metrics") or {}).get("scored_classes"):
            scored.setdefault(r["task"], r["metrics"]["scored_classes"])
    return ([f"{task}: {what} (%), not top-1" for task, what in named.items()] +
            [f"{task}: top-1 among its {n} classes (the other classes' logits left out, as CLIP scores it)"
             for task, n in scored.items()])
