"""The search phase of `noah:subnet=search`, one run per task and seed: NOAH's supernet trained on the protocol's
search split (train800 in the NOAH layout), a random subnet per batch (petlbench.engine.supernet), then NOAH's
evolutionary search (petlbench.engine.evolution) scoring subnets with the shared weights on val (val200). The test
split is not loaded: the run's protocol is the tune protocol's search stage (train, val).

Its record sits with the tune search records (`search/`, not a table row) and keeps the chosen subnet, its
parameter count, the search's space, limit and history; the subnet is also a file beside it (`<record>.subnet.yaml`,
{prompts, lora, adapter}, readable by `noah:subnet=FILE`) that the final runs retrain from scratch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from petlbench.data import shots
from petlbench.data.layouts import find_task_dir, split_sha256
from petlbench.engine.evolution import Evolution
from petlbench.engine.execute import data_identity, finish, new_record, report
from petlbench.engine.features import RunCache
from petlbench.engine.supernet import depth_choices, parts, set_subnet
from petlbench.engine.train import Diverged, evaluate, fit
from petlbench.errors import UserError
from petlbench.methods.noah import count
from petlbench.params import build_model
from petlbench.plan import RunPlan
from petlbench.records import is_finished, read_record, replaced_whole
from petlbench.backbone import file_sha256


def subnet_path(record_path: Path) -> Path:
    return record_path.with_suffix(".subnet.yaml")  # not *.json: record readers pass it by


def subnet_intact(record: dict | None, path: Path) -> bool:
    found = (record or {}).get("noah_search") or {}
    target = subnet_path(path)
    return target.is_file() and file_sha256(target) == found.get("subnet_sha256")


def execute_supernet(plan: RunPlan, out: Path, device: torch.device, cache: RunCache, progress: bool | None,
                     log: Callable[[str], None], where: str) -> dict:
    """Train the supernet and search it, unless a successful record of it (same config, same data, its subnet
    file intact) exists; the record names the chosen subnet."""
    record = new_record(plan, device, {"kind": "noah_search"})
    start = time.perf_counter()
    try:
        prep = plan.preprocessing()
        train = cache.get(plan, plan.protocol["train_splits"], prep, train=True)
        val = cache.get(plan, plan.protocol["eval_splits"], prep, train=False)
        train, val, drawn = shots.apply(plan, train, val)
    except UserError as exc:
        record.update(status="failed", error=str(exc))
        return report(finish(record, plan, out, device, start), log, where)
    plan = dataclasses.replace(plan, data_id=data_identity(train, val))
    path = plan.record_path(out)
    existing = read_record(path)
    if is_finished(existing, plan.metric) and subnet_intact(existing, path):
        log(f"{where}: done before, skipped ({existing['metrics'][plan.metric]:.1%})")
        return existing
    record.update(run_id=plan.run_id(), data_id=plan.data_id)
    record["data"].update(preprocessing=prep, train_images=len(train), eval_images=len(val),
                          train_digest=train.digest, eval_digest=val.digest, **({"shots": drawn} if drawn else {}))
    task_dir = find_task_dir(plan.data_root, plan.task)
    record["data"].update(folder=str(task_dir), split_files_sha256={  # the splits it read: never test
        split: split_sha256(plan.suite.layout, task_dir, plan.task, split)[:16]
        for split in plan.protocol["train_splits"] + plan.protocol["eval_splits"]})
    try:
        model, counts, _ = build_model(plan.backbone, plan.method, plan.task.classes, plan.seed)
        record["params"] = counts.as_dict()
        search = Search(plan, model, val, device)
        metrics = fit(model, train, val, plan.train, device, plan.seed, progress, before_eval=search,
                      objective=plan.method.training_loss)
        metrics[plan.metric] = metrics.pop("top1")  # the chosen subnet's val top-1 (fit scores it last)
        metrics.pop("eval_curve", None)  # the batches' random subnets: not a curve of anything
        target = subnet_path(path)
        with replaced_whole(target) as tmp:
            tmp.write_text(yaml.safe_dump(search.chosen, sort_keys=False, default_flow_style=None), encoding="utf-8")
        record["noah_search"] = {**search.described, "subnet_file": target.name,
                                 "subnet_sha256": file_sha256(target)}
        record.update(metrics=metrics, status="success")
    except (UserError, Diverged) as exc:
        record.update(status="failed", error=str(exc))
    return report(finish(record, plan, out, device, start), log, where)


class Search:
    """`fit`'s before_eval: NOAH's evolutionary search on val with the trained supernet, then the chosen subnet set
    (so `fit` scores it last)."""

    def __init__(self, plan: RunPlan, model: torch.nn.Module, val, device: torch.device):
        self.plan, self.model, self.val, self.device = plan, model, val, device
        self.chosen: dict | None = None
        self.described: dict = {}

    def score(self, sizes) -> float:
        set_subnet(self.model, sizes)
        return evaluate(self.model, self.val, self.plan.train, self.device)

    def __call__(self) -> None:
        cfg = self.plan.method.config
        depth = len(parts(self.model)[0])
        width = parts(self.model)[0][0].prompts.shape[-1]
        evolution = Evolution(list(cfg.choices), depth_choices(depth), depth, cfg.limit * 1e6,
                              lambda s: count(s, width), self.score, random.Random(self.plan.seed),
                              cfg.population, cfg.generations)
        found = evolution.run()
        if found["chosen"] is None:
            raise UserError(f"method noah: no subnet of choices {cfg.choices} fits under limit={cfg.limit} "
                            f"(million parameters, head excluded); raise the limit")
        self.chosen = found["chosen"]
        set_subnet(self.model, self.chosen)
        text = repr(sorted(self.chosen.items())).encode()
        self.described = {
            "subnet": self.chosen, "subnet_params": count(self.chosen, width),
            "sha256": hashlib.sha256(text).hexdigest()[:16],
            "space": {"choices": list(cfg.choices), "depths": depth_choices(depth), "limit_millions": cfg.limit,
                      "population": cfg.population, "generations": cfg.generations},
            "evaluated": found["evaluated"], "over_limit": found["over_limit"], "history": found["history"]}
