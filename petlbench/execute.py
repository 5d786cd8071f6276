"""Execute one planned run: build, load, train, evaluate, and write its record atomically.

`execute` skips a run whose successful record exists (re-running a finished command takes seconds)
and tries failed ones again; `run_one` does the work and records success or failure, so a sweep
goes on after one run fails.
"""
from __future__ import annotations

import resource
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from petlbench.backbone import file_sha256, preprocessing
from petlbench.data import SplitCache
from petlbench.errors import UserError
from petlbench.layouts import find_task_dir, split_file
from petlbench.options import as_dict
from petlbench.params import build_model
from petlbench.plan import RunPlan, method_label
from petlbench.records import SCHEMA, device_description, git_revision, package_versions, read_record, write_atomic
from petlbench.registry import available_methods
from petlbench.train import fit


def run_one(plan: RunPlan, out: Path, device: torch.device, cache: SplitCache, progress: bool | None,
            extra: dict[str, Any] | None = None) -> dict:
    """Build, load, train, evaluate, and write the record (success or failure) atomically."""
    origin = available_methods()[plan.method.name].origin
    b = plan.backbone
    record: dict[str, Any] = {
        "schema": SCHEMA, "run_id": plan.run_id(), "status": "running", "error": None,
        "suite": plan.suite.name, "suite_file": plan.suite.path, "task": plan.task.name,
        "task_group": plan.task.group, "task_index": plan.suite.tasks.index(plan.task),
        "num_classes": plan.task.classes, "seed": plan.seed,
        "method": {"name": plan.method.name, "label": method_label(plan.method), "origin": origin,
                   "options": as_dict(plan.method.config)},
        "backbone": {"name": b.name, "args": b.args, "weights": b.weights, "checkpoint": b.checkpoint,
                     "checkpoint_sha256": b.checkpoint_sha256},
        "protocol": plan.protocol, "recipe": plan.recipe.describe(), "train": asdict(plan.train),
        "data": {"root": str(plan.data_root), "layout": plan.suite.layout},
        "env": {**package_versions(), "petlbench_git": git_revision(), "device": device_description(device)},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {}),
    }
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model, counts = build_model(b, plan.method, plan.task.classes, plan.seed)
        pre = plan.suite.preprocessing
        prep = preprocessing(model, b, pre.crop_pct, pre.train, pre.eval)
        record["params"] = counts.as_dict()
        task_dir = find_task_dir(plan.data_root, plan.task)
        record["data"].update(folder=str(task_dir), preprocessing=prep,
                              cache=str(cache.cache_dir) if cache.cache_dir else None)
        train = cache.get(plan, plan.protocol["train_splits"], prep, train=True)
        evaluation = cache.get(plan, plan.protocol["eval_splits"], prep, train=False)
        used = plan.protocol["train_splits"] + plan.protocol["eval_splits"]
        record["data"].update(train_images=len(train), eval_images=len(evaluation), split_files_sha256={
            split: file_sha256(split_file(plan.suite.layout, task_dir, split))[:16] for split in used})
        metrics = fit(model, train, evaluation, plan.train, device, plan.seed, progress)
        metrics["val_top1" if plan.is_search else "test_top1"] = metrics.pop("top1")
        record.update(metrics=metrics, status="success")
    except UserError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # a crashed run is recorded and retried next time; the sweep goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    record["wall_time_s"] = round(time.perf_counter() - start, 3)
    record["peak_memory"] = peak_memory(device)
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_atomic(plan.record_path(out), record)
    return record


def execute(plan: RunPlan, out: Path, device: torch.device, cache: SplitCache, progress: bool | None,
            log: Callable[[str], None], where: str, extra: dict | None = None) -> dict:
    """Run a plan unless its successful record exists; say what happened in one line."""
    existing = read_record(plan.record_path(out))
    metric = "val_top1" if plan.is_search else "test_top1"
    if existing and existing.get("status") == "success":
        log(f"{where}: done before, skipped ({existing['metrics'][metric]:.1%})")
        return existing
    record = run_one(plan, out, device, cache, progress, extra)
    if record["status"] == "success":
        log(f"{where}: {metric.replace('_', ' ')} {record['metrics'][metric]:.1%} in {record['wall_time_s']:.1f}s")
    else:
        log(f"{where}: FAILED: {record['error']}")
    return record


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda max_memory_allocated", "mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process peak RSS (whole invocation so far)", "mb": round(peak_kb / 1024, 1)}
