"""The source run of a transfer method (MVLPT): one model trained once on the union of several tasks, whose
trained tensors (its prompts) then initialise each target task's run.

Each source task's labels are offset past the classes of the tasks before it, and the model is built for the union
of their class names (the text classifier of every source class), so one softmax ranges over all of them, as in the
official multitask training. The run is scored on the union (`top1`) and, per task, among that task's own classes
(`per_task`, the official per-task evaluation). Its record (`kind: "source"`, beside the suite's task folders in
`_sources/`) is not a table row; its prompts are a safetensors file beside it, whose sha256 the targets carry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from petlbench.data import shots
from petlbench.data.decode import TensorData
from petlbench.errors import UserError
from petlbench.options import as_dict
from petlbench.params import build_model
from petlbench.plan import RunPlan, file_label, method_label
from petlbench.records import SCHEMA, device_description, is_finished, package_versions, write_atomic
from petlbench.weights import weights_path, write_safetensors
from petlbench.backbone import file_sha256
from petlbench.engine.features import RunCache
from petlbench.engine.train import Diverged, evaluate, fit

SOURCES_DIR = "_sources"


@dataclass
class SourceRun:
    """The source run, as plain data: one plan per source task (the method in its source role, one seed)."""
    plans: list[RunPlan]

    @property
    def tasks(self) -> list[str]:
        return [p.task.name for p in self.plans]

    def config_id(self) -> str:
        key = json.dumps([p.config() for p in self.plans], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def record_dir(self, out: Path) -> Path:
        return out / self.plans[0].suite.name / SOURCES_DIR

    def record_path(self, out: Path, data_id: str) -> Path:
        first = self.plans[0]
        stem = f"{file_label(method_label(first.method))}__seed{first.seed}"
        return self.record_dir(out) / f"{stem}__{self.config_id()}-{data_id[:8]}.json"


class TaskLogits(nn.Module):
    """The union model's logits of one task's classes: that task scored among its own classes."""

    def __init__(self, model: nn.Module, start: int, stop: int):
        super().__init__()
        self.model, self.start, self.stop = model, start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.start:self.stop]


def union(parts: list[TensorData], offsets: list[int], what: str) -> TensorData:
    """One TensorData of several tasks' images, labels offset; the tasks must share input size and normalisation."""
    first = parts[0]
    for part in parts[1:]:
        if (part.images.shape[1:] != first.images.shape[1:] or part.crop != first.crop
                or not torch.equal(part.mean, first.mean) or not torch.equal(part.std, first.std)):
            raise UserError(f"mvlpt sources: the {what} images of the source tasks differ in size or normalisation "
                            f"({tuple(first.images.shape[1:])} vs {tuple(part.images.shape[1:])}); "
                            "choose source tasks of one preprocessing")
    digest = hashlib.sha256("\n".join(f"{o}:{p.digest}" for p, o in zip(parts, offsets)).encode()).hexdigest()
    return dataclasses.replace(first, images=torch.cat([p.images for p in parts]),
                               labels=torch.cat([p.labels + o for p, o in zip(parts, offsets)]), digest=digest)


def execute_source(run: SourceRun, out: Path, device: torch.device, cache: RunCache, progress: bool | None,
                   log: Callable[[str], None], where: str) -> dict:
    """Train the source run unless a successful record of it (same configs, same data, its prompts intact) exists."""
    start = time.perf_counter()
    first = run.plans[0]
    record = {"schema": SCHEMA, "kind": "source", "run_id": run.config_id(), "config_id": run.config_id(),
              "data_id": None, "status": "running", "error": None, "suite": first.suite.name, "tasks": run.tasks,
              "seed": first.seed, "method": {"name": first.method.name, "label": method_label(first.method),
                                             "options": as_dict(first.method.config)},
              "backbone": {"name": first.backbone.name, "args": first.backbone.args,
                           "checkpoint": first.backbone.checkpoint},
              "protocol": {"shots": None, **first.protocol}, "recipe": first.recipe.describe(),
              "train": dataclasses.asdict(first.train),
              "env": {**package_versions(), "device": device_description(device)},
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        loaded = [load(plan, cache) for plan in run.plans]
    except UserError as exc:
        record.update(status="failed", error=str(exc))
        return report(record, run.record_dir(out) / f"failed__{run.config_id()}.json", start, log, where)
    classes = [p.task.classes for p in run.plans]
    offsets = [sum(classes[:i]) for i in range(len(classes))]
    train = union([t for t, _ in loaded], offsets, "training")
    evaluation = union([e for _, e in loaded], offsets, "evaluation")
    data_id = hashlib.sha256(f"{train.digest}\n{evaluation.digest}".encode()).hexdigest()[:16]
    path = run.record_path(out, data_id)
    existing = read_source(path)
    if is_finished(existing, "top1") and prompts_intact(existing, path):
        log(f"{where}: done before, skipped ({existing['metrics']['top1']:.1%})")
        return existing
    record.update(run_id=f"{run.config_id()}-{data_id[:8]}", data_id=data_id)
    names = [name for plan in run.plans for name in plan.task.classnames]
    record["text"] = {"classnames": names}
    record["data"] = {"tasks": {p.task.name: {"classes": c, "label_offset": o, "train_images": len(t),
                                              "eval_images": len(e), "train_digest": t.digest,
                                              "eval_digest": e.digest}
                                for p, c, o, (t, e) in zip(run.plans, classes, offsets, loaded)}}
    try:
        model, counts, _ = build_model(first.backbone, first.method, sum(classes), first.seed, classnames=names)
        record["params"] = counts.as_dict()
        metrics = fit(model, train, evaluation, first.train, device, first.seed, progress)
        metrics["per_task"] = {p.task.name: evaluate(TaskLogits(model, o, o + c), e, first.train, device)
                               for p, o, c, (_, e) in zip(run.plans, offsets, classes, loaded)}
        target = weights_path(path)
        state = carried_state(model)
        record["prompts"] = {"file": target.name, "sha256": write_safetensors(state, target, {
            "format": "petlbench source prompts"}), "tensors": len(state)}
        record.update(metrics=metrics, status="success")
    except (UserError, Diverged) as exc:
        record.update(status="failed", error=str(exc))
    return report(record, path, start, log, where)


def load(plan: RunPlan, cache: RunCache) -> tuple[TensorData, TensorData]:
    prep = plan.preprocessing()
    train = cache.get(plan, plan.protocol["train_splits"], prep, train=True)
    evaluation = cache.get(plan, plan.protocol["eval_splits"], prep, train=False)
    train, evaluation, _ = shots.apply(plan, train, evaluation)
    return train, evaluation


def carried_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a target run starts from: every tensor the source run trained (a transfer method trains nothing that
    depends on the classes: MVLPT's prompts or text context, never a class's row)."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def read_source(path: Path) -> dict | None:
    """A source record (tables skip them: `petlbench.records.parse_record` reads them as no run's), or None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("kind") == "source" and record.get("schema") == SCHEMA \
        else None


def prompts_intact(record: dict, path: Path) -> bool:
    prompts = path.parent / str((record.get("prompts") or {}).get("file", ""))
    return prompts.is_file() and file_sha256(prompts) == record["prompts"].get("sha256")


def report(record: dict, path: Path, start: float, log: Callable[[str], None], where: str) -> dict:
    record["wall_time_s"] = round(time.perf_counter() - start, 3)
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    record["record"] = str(path)
    write_atomic(path, record)
    if record["status"] == "success":
        per_task = ", ".join(f"{k} {v:.1%}" for k, v in record["metrics"]["per_task"].items())
        log(f"{where}: union top1 {record['metrics']['top1']:.1%} ({per_task}) in {record['wall_time_s']:.1f}s")
    else:
        log(f"{where}: FAILED: {record['error']}")
    return record
