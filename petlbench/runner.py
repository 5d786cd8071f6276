"""The runner: plan method x task x seed runs of a suite, execute each, write one record per run.

A run whose successful record exists is skipped, so re-running a finished command takes seconds;
failed runs are tried again. Each record is written atomically once the run has ended.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from petlbench.backbone import BackboneSpec, file_sha256, preprocessing
from petlbench.data import TensorData, load_split
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import as_dict, build
from petlbench.params import build_model
from petlbench.records import SCHEMA, device_description, git_revision, package_versions, read_record, write_atomic
from petlbench.registry import available_methods, parse_method_list
from petlbench.suite import Suite, Task, load_suite
from petlbench.train import TrainConfig, fit, pick_device

DATA_ROOT_ENV = "PETLBENCH_DATA_ROOT"


def method_label(method: Method) -> str:
    """'vpt_deep' or 'vpt_deep:tokens=10' (only options that differ from the defaults)."""
    default = as_dict(method.Config())
    changed = [f"{k}={v}" for k, v in as_dict(method.config).items() if default.get(k) != v]
    return ":".join([method.name, *changed])


@dataclass
class RunPlan:
    suite: Suite
    task: Task
    method: Method
    backbone: BackboneSpec
    seed: int
    train: TrainConfig
    data_root: Path

    def config(self) -> dict[str, Any]:
        """The fully resolved configuration; its hash names the record."""
        return {
            "suite": self.suite.name, "task": self.task.name, "seed": self.seed,
            "method": {"name": self.method.name, "options": as_dict(self.method.config)},
            "backbone": {"name": self.backbone.name, "args": self.backbone.args, "weights": self.backbone.weights,
                         "mean": self.backbone.mean, "std": self.backbone.std,
                         "interpolation": self.backbone.interpolation},
            "train": asdict(self.train), "protocol": self.suite.protocol,
        }

    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:12]

    def record_path(self, out: Path) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", method_label(self.method))
        return out / self.suite.name / self.task.name / f"{slug}__seed{self.seed}__{self.run_id()}.json"


def resolve_train(method: Method, suite: Suite, overrides: dict[str, Any]) -> TrainConfig:
    """Recipe precedence: TrainConfig defaults < the method's paper recipe < the suite < --train."""
    return build(TrainConfig, {**method.train_defaults, **suite.train, **overrides}, f"training config of {method.name}")


def resolve_backbone(suite: Suite, data_root: Path, name: str | None, args: dict[str, Any] | None,
                     checkpoint: str | None, random_init: bool, mean: tuple | None = None,
                     std: tuple | None = None) -> BackboneSpec:
    """--backbone replaces the suite's backbone; --backbone-args and --checkpoint refine either."""
    base = {} if name else dict(suite.backbone)
    name = name or base.get("name")
    if not name:
        raise UserError(f"{suite.path}: the suite names no backbone; pass --backbone NAME")
    ckpt = checkpoint or base.get("checkpoint")
    if ckpt and not checkpoint:  # a suite's relative checkpoint lives in its data root
        ckpt = str(data_root / Path(ckpt).expanduser()) if not Path(ckpt).expanduser().is_absolute() else ckpt
    ckpt = None if random_init else ckpt
    if ckpt and not Path(ckpt).is_file():
        where = "--checkpoint" if checkpoint else f"{suite.path}: key 'backbone.checkpoint'"
        raise UserError(f"{where}: {ckpt}: file not found")
    spec = BackboneSpec(name=name, args={**base.get("args", {}), **(args or {})},
                        checkpoint=ckpt, checkpoint_sha256=file_sha256(ckpt) if ckpt else None,
                        pretrained=bool(base.get("pretrained", True)) and not random_init,
                        mean=_triple(mean or base.get("mean")), std=_triple(std or base.get("std")),
                        interpolation=base.get("interpolation"))
    return spec


def resolve_data_root(suite: Suite, data_root: str | None) -> Path:
    """--data-root, else the suite's own data_root, else $PETLBENCH_DATA_ROOT."""
    chosen = data_root or suite.data_root or os.environ.get(DATA_ROOT_ENV)
    if not chosen:
        raise UserError(f"suite {suite.name!r} needs a data root: pass --data-root DIR or set ${DATA_ROOT_ENV}")
    return Path(os.path.expandvars(chosen)).expanduser()


def plan_runs(suite: Suite, tasks: list[Task], methods: list[Method], seeds: Iterable[int], backbone: BackboneSpec,
              train_overrides: dict[str, Any], data_root: Path) -> list[RunPlan]:
    """Task-major order, so each task's data is decoded once per invocation."""
    return [RunPlan(suite, task, m, backbone, seed, resolve_train(m, suite, train_overrides), data_root)
            for task in tasks for m in methods for seed in seeds]


class SplitCache:
    """Keeps the decoded splits of the current task in memory across its methods and seeds."""

    def __init__(self):
        self.key, self.splits = None, {}

    def get(self, task_dir: Path, split: str, classes: int, prep: dict) -> TensorData:
        key = (str(task_dir), json.dumps(prep, sort_keys=True))
        if key != self.key:
            self.key, self.splits = key, {}
        if split not in self.splits:
            self.splits[split] = load_split(task_dir, split, classes, prep)
        return self.splits[split]


def run_one(plan: RunPlan, out: Path, device: torch.device, cache: SplitCache, progress: bool | None) -> dict:
    origin = available_methods()[plan.method.name].origin
    record: dict[str, Any] = {
        "schema": SCHEMA, "run_id": plan.run_id(), "status": "running", "error": None,
        "suite": plan.suite.name, "suite_file": plan.suite.path, "task": plan.task.name,
        "task_group": plan.task.group, "task_index": plan.suite.tasks.index(plan.task),
        "num_classes": plan.task.classes, "seed": plan.seed,
        "method": {"name": plan.method.name, "label": method_label(plan.method), "origin": origin,
                   "options": as_dict(plan.method.config)},
        "backbone": {"name": plan.backbone.name, "args": plan.backbone.args, "weights": plan.backbone.weights,
                     "checkpoint": plan.backbone.checkpoint, "checkpoint_sha256": plan.backbone.checkpoint_sha256},
        "protocol": plan.suite.protocol, "train": asdict(plan.train),
        "data": {"root": str(plan.data_root), "layout": plan.suite.layout},
        "env": {**package_versions(), "petlbench_git": git_revision(), "device": device_description(device)},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model, counts = build_model(plan.backbone, plan.method, plan.task.classes, plan.seed)
        prep = preprocessing(model, plan.backbone)
        task_dir = plan.data_root / plan.task.name
        train = cache.get(task_dir, plan.suite.protocol["train_split"], plan.task.classes, prep)
        test = cache.get(task_dir, plan.suite.protocol["eval_split"], plan.task.classes, prep)
        record["params"] = counts.as_dict()
        record["data"].update(preprocessing=prep, train_images=len(train), eval_images=len(test))
        record["metrics"] = fit(model, train, test, plan.train, device, plan.seed, progress)
        record["status"] = "success"
    except UserError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # a crashed run is recorded and retried next time; the sweep goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    record["wall_time_s"] = round(time.perf_counter() - start, 3)
    record["peak_memory"] = _peak_memory(device)
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_atomic(plan.record_path(out), record)
    return record


def run(suite: str = "demo", methods: str | list[str] = "linear", seeds: Iterable[int] = (0,),
        tasks: list[str] | None = None, backbone: str | None = None, backbone_args: dict | None = None,
        checkpoint: str | None = None, random_init: bool = False, mean: tuple | None = None,
        std: tuple | None = None, data_root: str | None = None,
        out: str | Path = "results", train: dict | None = None, device: str = "auto",
        progress: bool | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Run methods x tasks x seeds of a suite (what `petlbench run` does); returns one record per run."""
    the_suite = load_suite(suite)
    method_list = parse_method_list(methods if isinstance(methods, str) else ",".join(methods),
                                    the_suite.method_options)
    train_overrides = dict(train or {})
    build(TrainConfig, train_overrides, "--train")
    root = resolve_data_root(the_suite, data_root)
    if the_suite.prepare == "demo":
        from petlbench.demo import prepare
        prepare(root, the_suite, log=log)
    spec = resolve_backbone(the_suite, root, backbone, backbone_args, checkpoint, random_init, mean, std)
    plans = plan_runs(the_suite, the_suite.select(tasks), method_list, list(seeds), spec, train_overrides, root)
    out, dev, cache = Path(out), pick_device(device), SplitCache()
    records = []
    for i, plan in enumerate(plans, 1):
        where = f"[{i}/{len(plans)}] {plan.suite.name}/{plan.task.name} {method_label(plan.method)} seed {plan.seed}"
        existing = read_record(plan.record_path(out))
        if existing and existing.get("status") == "success":
            log(f"{where}: done before, skipped ({existing['metrics']['test_top1']:.1%})")
            records.append(existing)
            continue
        record = run_one(plan, out, dev, cache, progress)
        if record["status"] == "success":
            log(f"{where}: top-1 {record['metrics']['test_top1']:.1%} in {record['wall_time_s']:.1f}s")
        else:
            log(f"{where}: FAILED: {record['error']}")
        records.append(record)
    return records


def _triple(value) -> tuple[float, ...] | None:
    if not value:
        return None
    if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
        raise UserError(f"mean/std: expected three numbers (one per RGB channel), got {value!r}")
    return tuple(float(v) for v in value)


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda max_memory_allocated", "mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process peak RSS (whole invocation so far)", "mb": round(peak_kb / 1024, 1)}
