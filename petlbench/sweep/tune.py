"""The `tune` protocol's pieces (petlbench.sweep.phases runs its phases), the VTAB-1k rule: choose hyper-parameters
with the 1000 labelled examples only.

For each task and method: train every grid point on `train` (train800), evaluate on `val` (val200),
pick the best last-epoch val top-1 (ties: the smaller lr), then train the chosen point on `trainval`
(train800val200) for every seed and evaluate on `test`. The test split is not read before that.
Every search record and the selection (grid, every result, the choice) are kept.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import as_dict, build
from petlbench.plan import RunPlan, file_label, method_label, rebuilt_train
from petlbench.records import write_atomic
from petlbench.specs import TrainConfig

TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def check_grid(grid: dict[str, list], method: Method, where: str) -> None:
    """Every key a training setting or an option of the method, every value valid for it (range included)."""
    option_keys = {f.name for f in dataclasses.fields(method.Config)}
    for key, values in grid.items():
        if key not in TRAIN_KEYS | option_keys:
            raise UserError(f"{where}: grid key {key!r} is neither a training setting nor an option of "
                            f"{method.name}; training settings: {', '.join(sorted(TRAIN_KEYS))}")
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid key {key!r} needs a non-empty list of values, got {values!r}")
        for value in values:
            build(TrainConfig if key in TRAIN_KEYS else method.Config, {key: value}, where)


def grid_points(grid: dict[str, list], plan: RunPlan, where: str) -> list[dict[str, Any]]:
    """Every combination of the grid, each checked against TrainConfig and the method's options."""
    check_grid(grid, plan.method, where)
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    for point in points:
        apply_point(plan, point, where)  # combinations too, before any training
    return points


def apply_point(plan: RunPlan, point: dict[str, Any], where: str) -> RunPlan:
    train = {k: v for k, v in point.items() if k in TRAIN_KEYS}
    options = {k: v for k, v in point.items() if k not in TRAIN_KEYS}
    method = plan.method
    if options:
        method = type(method)(build(method.Config, {**as_dict(method.config), **options}, f"{where} grid"))
    return dataclasses.replace(plan, method=method,
                               train=rebuilt_train({**dataclasses.asdict(plan.train), **train}, f"{where} grid"),
                               train_from={**plan.train_from, **dict.fromkeys(train, "tune grid")})


def choose(results: list[tuple[dict, dict]]) -> dict | None:
    """The best val top-1; among equals the smaller lr, then the first in grid order."""
    done = [(point, r) for point, r in results if r.get("status") == "success"]
    if not done:
        return None
    def lr(point, record):
        return point["lr"] if "lr" in point else record["train"]["lr"]
    return max(done, key=lambda pr: (pr[1]["metrics"]["val_top1"], -lr(*pr)))[0]


def selection_dir(base: RunPlan, out: Path) -> Path:
    """Where a search's selection files live: beside its records (`search/`); `status` looks there too."""
    return base.record_dir(out)


def selection_files(base: RunPlan, out: Path) -> list[Path]:
    return sorted(selection_dir(base, out).glob(f"{file_label(method_label(base.method))}__selection__*.json"))


def write_selection(base: RunPlan, grid: dict, results: list[tuple[dict, dict]], chosen: dict | None,
                    out: Path) -> Path:
    data = sorted({str(r.get("data_id")) for _, r in results})  # the same search on changed data is another
    key = json.dumps({"base": base.config(), "grid": grid, "data": data}, sort_keys=True, default=str)
    selection_id = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = selection_dir(base, out) / f"{file_label(method_label(base.method))}__selection__{selection_id}.json"
    write_atomic(path, {
        "kind": "selection", "selection_id": selection_id, "suite": base.suite.name, "task": base.task.name,
        "method": method_label(base.method), "recipe": base.recipe.describe(), "protocol": base.protocol,
        "grid": grid, "rule": "best last-epoch val top-1; ties -> smaller lr",
        "results": [{"point": p, "status": r.get("status"), "val_top1": (r.get("metrics") or {}).get("val_top1"),
                     "run_id": r.get("run_id"), "error": r.get("error")} for p, r in results],
        "chosen": chosen, "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return path
