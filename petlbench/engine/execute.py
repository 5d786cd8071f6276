"""Execute one planned run: load its data, build, train, evaluate, and write its record atomically.

A run's identity is its resolved configuration plus the digest of the decoded data it sees, so
`execute` loads (and verifies) the data first: a successful record of that identity is skipped (a
finished command re-runs in seconds), a failed one is tried again, and a task whose labels or images
changed trains again beside the old record, which is kept.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from petlbench.data.build import identify
from petlbench.data.decode import TensorData
from petlbench.data import classsplit, shots
from petlbench.errors import UserError
from petlbench.data.domains import describe as describe_domains, scored_labels
from petlbench.data.layouts import find_task_dir, split_sha256
from petlbench.options import as_dict
from petlbench.params import build_model, plan_text
from petlbench.plan import RunPlan, defaults_source, method_label
from petlbench.records import (SCHEMA, device_description, git_revision, is_finished, package_versions, read_record,
                               recency, write_atomic)
from petlbench.registry import available_methods
from petlbench.engine import newclasses, rewind
from petlbench.engine.closedform import ClosedForm
from petlbench.engine.selection import Selection
from petlbench.engine.features import RunCache
from petlbench.engine.samples import TopK, order_identity, samples_path, write_samples
from petlbench.engine.train import Diverged
from petlbench.engine.trainpath import train_model
from petlbench.weights import save_task, weights_path, weights_problem


def execute(plan: RunPlan, out: Path, device: torch.device, cache: RunCache, progress: bool | None,
            log: Callable[[str], None], where: str, extra: dict | None = None, save_weights: bool = True,
            save_samples: bool = True) -> dict:
    """Run a plan unless a successful record of it (same config, same data) exists; say what happened in one line."""
    record = new_record(plan, device, extra)
    start = time.perf_counter()
    try:
        prep = plan.preprocessing()
        train = cache.get(plan, plan.protocol["train_splits"], prep, train=True)
        evaluation = cache.get(plan, plan.protocol["eval_splits"], prep, train=False)
        train, evaluation, drawn = shots.apply(plan, train, evaluation)  # --shots K: the seed's K per class
        train, evaluation, split = classsplit.apply(plan, train, evaluation)  # --base-to-new: base classes only
    except UserError as exc:  # no data, no data id: the record is named by the config alone
        record.update(status="failed", error=str(exc))
        return report(finish(record, plan, out, device, start), log, where)
    plan = dataclasses.replace(plan, data_id=data_identity(train, evaluation))
    path = plan.record_path(out)
    if path.is_dir():  # found before training, not when the result has nowhere to go
        raise UserError(f"{path}: a folder where the run's record file goes; move it away and run again")
    existing = read_record(path)
    if is_finished(existing, plan.metric):
        problem = weights_problem(existing, path)
        if problem is None:
            log(f"{where}: done before, skipped ({existing['metrics'][plan.metric]:.1%})")
            return confirm(existing, plan, out, log, where)
        try:
            kept = set_aside(path)
        except OSError as exc:
            log(f"{where}: {problem}; cannot move its record aside to train again ({exc.strerror or exc}); skipped")
            return existing
        log(f"{where}: {problem}; training again (the old record kept as {kept})")
    changed = superseded(plan, out)
    if changed:
        log(f"{where}: the data changed since {changed.name} (kept); training again")
    record.update(run_id=plan.run_id(), data_id=plan.data_id)
    record["data"].update(preprocessing=prep, train_images=len(train), eval_images=len(evaluation),
                          train_digest=train.digest, eval_digest=evaluation.digest)
    if drawn is not None:
        record["data"]["shots"] = drawn
    if split is not None:
        record["data"]["base_to_new"] = split.described
    keep = TopK() if save_samples and not plan.is_search and split is None else None  # base-to-new: no samples
    trained = run_one(plan, record, train, evaluation, device, progress, cache, keep)
    if trained is not None and split is not None and split.new_test is not None:
        trained = newclasses.into_record(trained, split, plan, record, device)
    if trained is not None and save_weights and not plan.is_search:
        target = weights_path(path)
        try:
            record["weights"] = save_task(*trained, target)
        except Exception as exc:  # a full disk raises safetensors' own error, not OSError: the result stands
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            record["weights"] = {"file": target.name, "lost": f"cannot write the task weights ({reason})"}
            log(f"{where}: weights lost: {target}: {reason}")
    if trained is not None and keep is not None:  # written before the record, so a record never names a missing file
        target = samples_path(path)
        try:
            record["samples"] = write_samples(target, keep, plan.task.classes, order_identity(
                record["data"]["split_files_sha256"], plan.protocol["eval_splits"]))
        except Exception as exc:  # as for the weights: the result stands without its per-sample outputs
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            record["samples"] = {"file": target.name, "lost": f"cannot write the samples ({reason})"}
            log(f"{where}: samples lost: {target}: {reason}")
    return report(finish(record, plan, out, device, start), log, where)


def confirm(record: dict[str, Any], plan: RunPlan, out: Path, log: Callable[[str], None], where: str) -> dict:
    """A skipped run's record is what its config shows again: when a sibling (the same config on data since
    changed back) is more recent, stamp `confirmed_at` so tables pick this one. Only then is it rewritten."""
    path = plan.record_path(out)
    siblings = (read_record(p) for p in plan.record_dir(out).glob(f"{plan.record_stem()}__{plan.config_id()}*.json")
                if p != path)
    if not any(is_finished(s, plan.metric) and recency(s) > recency(record) for s in siblings):
        return record
    record = {**record, "confirmed_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    try:
        write_atomic(path, record)
    except OSError as exc:
        log(f"{where}: cannot mark {path.name} as the current record ({exc.strerror or exc}); tables may show "
            "the record of the data used before")
    return record


def set_aside(path: Path) -> Path:
    """Move a record (and what is left of its weights) to replaced/ beside it, named by the time: it is kept,
    tables still find it (and show it if its new run fails), and the run's own name is free again."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    kept = path.parent / "replaced" / f"{path.stem}.{stamp}.json"
    kept.parent.mkdir(exist_ok=True)
    if weights_path(path).exists():
        os.replace(weights_path(path), weights_path(kept))
    if samples_path(path).exists():
        os.replace(samples_path(path), samples_path(kept))
    os.replace(path, kept)
    return kept


def new_record(plan: RunPlan, device: torch.device, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Everything known before the run: identity, suite, task, method, backbone, protocol, recipe, environment."""
    origin = available_methods()[plan.method.name].origin
    b = plan.backbone
    return {
        "schema": SCHEMA, "run_id": plan.run_id(), "config_id": plan.config_id(), "data_id": plan.data_id,
        "status": "running", "error": None,
        "suite": plan.suite.name, "suite_file": str(Path(plan.suite.path).resolve()), "task": plan.task.name,
        "task_group": plan.task.group, "task_index": plan.suite.tasks.index(plan.task),
        "num_classes": plan.task.classes, "seed": plan.seed,
        "method": {"name": plan.method.name, "label": method_label(plan.method), "origin": origin,
                   "options": as_dict(plan.method.config),
                   **({"resolved": resolved} if (resolved := plan.method.identity().get("resolved")) else {})},
        "backbone": {"name": b.name, "args": b.args, "weights": b.weights, "checkpoint": b.checkpoint,
                     "checkpoint_sha256": b.checkpoint_sha256},
        "protocol": {"shots": None, **plan.protocol},  # shots: K under --shots K (few-shot), else null
        "recipe": {**plan.recipe.describe(), "defaults": defaults_source(plan.method, plan.recipe),
                   **({"train_from": plan.train_from} if plan.train_from else {})},  # train key -> its layer
        "train": asdict(plan.train),
        "data": {"root": str(plan.data_root), "layout": plan.suite.layout,
                 **identify(find_task_dir(plan.data_root, plan.task), plan.suite.layout).as_record(),
                 **({"domains": describe_domains(plan.task)} if plan.task.dataset else {})},
        "env": {**package_versions(), "petlbench_git": git_revision(), "device": device_description(device)},
        **({"text": {**plan.text(), "source": plan.task.classnames_source}} if plan.text() else {}),  # names' origin
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {}),
    }


def run_one(plan: RunPlan, record: dict[str, Any], train: TensorData, evaluation: TensorData,
            device: torch.device, progress: bool | None, cache: RunCache,
            keep: TopK | None = None) -> tuple[torch.nn.Module, list[str]] | None:
    """Build, train and evaluate on loaded data; the outcome (success or failure) goes into `record`.
    Returns the trained model and its task keys on success."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        built = classsplit.trained_plan(plan)  # --base-to-new: the model classifies the base classes only
        closed = ClosedForm(built, train, cache, device) if plan.method.closed_form else None  # Tip-Adapter's cache
        chosen = Selection(plan.method, train, plan.train.batch_size, plan.seed, device) if plan.method.selects \
            else None  # GPS's gradient selection, from the training data only
        hook = closed.fit if closed else chosen.fit if chosen else None
        model, counts, task_keys = build_model(built.backbone, built.method, built.task.classes, built.seed,
                                               **plan_text(built), closed_form=hook)
        if chosen:
            record["parameter_selection"] = chosen.record  # not `selection`: a tuned final's choice
        task_dir = find_task_dir(plan.data_root, plan.task)
        scored = scored_labels(task_dir, plan.task, plan.protocol["eval_splits"]) if plan.task.dataset else None
        if plan.method.rewinds():  # E2VPT's pruning: a first training, the cut, the same initialisation again
            (model, counts, task_keys), record["pruning"] = rewind.prune_and_rewind(
                built, model, train, device,
                lambda first: train_model(built, first, task_keys, train, evaluation, device, progress, cache,
                                          scored=scored),
                lambda: build_model(built.backbone, built.method, built.task.classes, built.seed, **plan_text(built)))
        if built is not plan:
            newclasses.require(model.get_classifier(), f"{plan.method.name} on {plan.backbone.name}")
        record["params"] = counts.as_dict()
        used = plan.protocol["train_splits"] + plan.protocol["eval_splits"]
        record["data"].update(folder=str(task_dir), split_files_sha256={
            split: split_sha256(plan.suite.layout, task_dir, plan.task, split)[:16] for split in used})
        metrics = train_model(built, model, task_keys, train, evaluation, device, progress, cache, keep,
                              (lambda: closed.choose(model)) if closed else None, scored)
        metrics[plan.metric] = metrics.pop("top1")
        if scored is not None:  # ImageNet-A/-R: the accuracy among the task's class subset
            metrics["scored_classes"] = len(scored)
        if "map11" in metrics:  # a multi-label task (ELEVATER's VOC 2007): its named metric, e.g. test_map11
            metrics[plan.metric.replace("top1", "map11")] = metrics.pop("map11")
            record["protocol"].update(metric="map11", top1="the top-scored class is one of the image's labels")
        if closed:
            record["closed_form"] = closed.record
        if "eval_curve" in metrics:
            metrics["val_curve" if plan.is_search else "test_curve"] = metrics.pop("eval_curve")
        record.update(metrics=metrics, status="success")
        return model, task_keys
    except (UserError, Diverged) as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # a crashed run is recorded and retried next time; the sweep goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    return None


def data_identity(train: TensorData, evaluation: TensorData) -> str:
    """One digest of the decoded images and labels a run trains and evaluates on."""
    return hashlib.sha256(f"{train.digest}\n{evaluation.digest}".encode()).hexdigest()[:16]


def superseded(plan: RunPlan, out: Path) -> Path | None:
    """A successful record of the same config on other data (the task's files changed since), if any."""
    for path in sorted(plan.record_dir(out).glob(f"{plan.record_stem()}__{plan.config_id()}-*.json")):
        if path != plan.record_path(out) and is_finished(read_record(path), plan.metric):
            return path
    return None


def finish(record: dict[str, Any], plan: RunPlan, out: Path, device: torch.device, start: float) -> dict[str, Any]:
    record["wall_time_s"] = round(time.perf_counter() - start, 3)
    record["peak_memory"] = peak_memory(device)
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    path = plan.record_path(out)
    if not save(record, path):
        return record
    for sibling in plan.record_dir(out).glob(f"{plan.record_stem()}__{plan.config_id()}*.json"):
        earlier = read_record(sibling)  # an earlier failed attempt of this config is superseded by this one
        if sibling != path and earlier is not None and earlier.get("status") == "failed":
            try:
                sibling.unlink(missing_ok=True)
            except OSError:
                pass  # it stays: `table` shows the newest record of a config anyway
    return record


def save(record: dict[str, Any], path: Path) -> bool:
    """Write the record; if its folder became unwritable during the run, keep it in a temp folder, say where,
    and note it in `unsaved` so the command's summary names it and exits non-zero. True when saved at `path`."""
    try:
        write_atomic(path, record)
        return True
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / "petlbench-unsaved" / path.relative_to(path.parents[2])
        record["unsaved"] = {"meant_for": str(path), "reason": exc.strerror or str(exc), "rescued_to": str(rescue)}
        try:
            write_atomic(rescue, record)
        except OSError as again:  # nowhere to write: the record lives on in memory (the summary shows it)
            record["unsaved"]["rescued_to"] = None
            print(f"petlbench: warning: {path}: cannot write the record ({exc.strerror or exc}), nor to {rescue} "
                  f"({again.strerror or again}); it is lost once this command ends", file=sys.stderr, flush=True)
            return False
        print(f"petlbench: warning: {path}: cannot write the record ({exc.strerror or exc}); saved as {rescue}",
              file=sys.stderr, flush=True)
        return False


def report(record: dict[str, Any], log: Callable[[str], None], where: str) -> dict[str, Any]:
    if record["status"] == "success":
        metric = "val_top1" if record["protocol"].get("stage") == "search" else "test_top1"
        log(f"{where}: {metric.replace('_', ' ')} {record['metrics'][metric]:.1%} in {record['wall_time_s']:.1f}s")
    else:
        log(f"{where}: FAILED: {record['error']}")
    return record


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda max_memory_allocated", "mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process peak RSS (whole invocation so far)", "mb": round(peak_kb / 1024, 1)}
