"""The runner: execute RunPlans, one JSON record per run, and the `run` entry point (CLI and API).

A run whose successful record exists is skipped, so re-running a finished command takes seconds;
failed runs are tried again. Each record is written atomically once the run has ended.
"""
from __future__ import annotations

import resource
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from petlbench.backbone import file_sha256, preprocessing
from petlbench.cache import resolve_cache_dir
from petlbench.data import TensorData, load_images
from petlbench.errors import UserError
from petlbench.layouts import find_task_dir, split_file
from petlbench.options import as_dict, build
from petlbench.params import build_model
from petlbench.plan import DATA_ROOT_ENV, RunPlan, method_label, plan_one, resolve_backbone, resolve_data_root
from petlbench.records import SCHEMA, device_description, git_revision, package_versions, read_record, write_atomic
from petlbench.registry import available_methods, parse_method_list
from petlbench.suite import PROTOCOLS, load_suite
from petlbench.train import TrainConfig, fit, pick_device


class SplitCache:
    """Keeps the decoded splits of the current task in memory across its methods, seeds and grid."""

    def __init__(self, cache_dir: Path | None = None):
        self.cache_dir, self.task, self.data = cache_dir, None, {}

    def get(self, plan: RunPlan, splits: list[str], prep: dict, train: bool) -> TensorData:
        task_dir = find_task_dir(plan.data_root, plan.task)
        if task_dir != self.task:
            self.task, self.data = task_dir, {}
        key = (tuple(splits), repr(sorted(prep.items())), train)
        if key not in self.data:
            self.data[key] = load_images(plan.suite.layout, task_dir, plan.task, splits, prep, train, self.cache_dir)
        return self.data[key]


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
    record["peak_memory"] = _peak_memory(device)
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


def run(suite: str = "demo", methods: str | list[str] = "linear", seeds: Iterable[int] = (0,),
        tasks: list[str] | None = None, backbone: str | None = None, backbone_args: dict | None = None,
        checkpoint: str | None = None, random_init: bool = False, mean: tuple | None = None,
        std: tuple | None = None, data_root: str | None = None, out: str | Path = "results",
        train: dict | None = None, recipe: str | None = None, protocol: str = "final", grid: dict | None = None,
        device: str = "auto", cache_dir: str | Path | None = None, progress: bool | None = None,
        log: Callable[[str], None] = print) -> list[dict]:
    """Run methods x tasks x seeds of a suite (what `petlbench run` does); returns the final records."""
    the_suite = load_suite(suite)
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    method_list = parse_method_list(methods if isinstance(methods, str) else ",".join(methods),
                                    the_suite.method_options)
    overrides = dict(train or {})
    build(TrainConfig, overrides, "--train")
    root = resolve_data_root(the_suite, data_root)
    if the_suite.prepare == "demo":
        from petlbench.demo import prepare
        prepare(root, the_suite, log=log)
    if not root.is_dir():
        raise UserError(f"data root {root}: folder not found (from --data-root, the suite or ${DATA_ROOT_ENV})")
    spec = resolve_backbone(the_suite, root, backbone, backbone_args, checkpoint, random_init, mean, std)
    selected = the_suite.select(tasks)
    seeds = list(seeds)
    if not seeds:
        raise UserError("--seeds: expected at least one seed, e.g. 0 or 0,1,2")
    out, dev = Path(out), pick_device(device)
    cache = SplitCache(resolve_cache_dir(cache_dir))
    if protocol == "tune":
        from petlbench.tune import run_tune
        return run_tune(the_suite, selected, method_list, seeds, spec, overrides, recipe, grid, root, out, dev,
                        cache, progress, log)
    plans = [plan_one(the_suite, task, m, spec, seed, overrides, recipe, the_suite.protocol("final"), root)
             for task in selected for m in method_list for seed in seeds]  # task-major: decode each task once
    return [execute(p, out, dev, cache, progress, log,
                    f"[{i}/{len(plans)}] {p.suite.name}/{p.task.name} {method_label(p.method)} seed {p.seed}")
            for i, p in enumerate(plans, 1)]


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda max_memory_allocated", "mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process peak RSS (whole invocation so far)", "mb": round(peak_kb / 1024, 1)}
