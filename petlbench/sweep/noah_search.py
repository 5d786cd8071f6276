"""Two phases of one sweep for `noah:subnet=search` (NOAH's one-shot search, issue 17), as petlbench.sweep.transfer
runs MVLPT's: first the search phase, then the finals.

The search phase runs, per task and seed, NOAH's supernet on the tune protocol's search stage (train800, scored on
val200; the test split is not read) and its evolutionary search (petlbench.engine.noah_search): one record in
`search/` naming the chosen subnet and a subnet file beside it. Each final run then trains that subnet from scratch
on the final protocol's splits (train800val200, test) as `noah:subnet=FILE` would (the subnet's sizes are part of
its identity, so a search that changed its mind re-trains the final, and an unchanged one lets it be skipped); it
keeps the table label `noah:subnet=search` (one row over tasks) and names its search in `noah_search = {run_id,
record, subnet_file, subnet, subnet_params, val_top1}`. Only the `final` protocol plans it (a tune grid would search
per grid point; a paper source names its subnets); the others refuse it, as does --base-to-new.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.methods.noah import Noah, read_subnet_file
from petlbench.plan import RunPlan, method_label, rebuilt_train
from petlbench.specs import Task
from petlbench.engine.supernet import NoahSupernet
from petlbench.sweep.jobs import Unit
from petlbench.sweep.transfer import relative

Found = dict[tuple[int, str, int], dict | None]  # (id of the method, task, seed) -> the search record (None: not done)


def is_search(method: Method) -> bool:
    return method.name == "noah" and getattr(method.config, "subnet", None) == "search"


def check(sweep) -> None:
    """Refused with the command: a search off the final protocol or with --base-to-new."""
    for method in filter(is_search, sweep.methods):
        if sweep.protocol != "final" or sweep.base_to_new:
            what = "--base-to-new" if sweep.base_to_new else f"--protocol {sweep.protocol}"
            raise UserError(f"--methods {method_label(method)}: NOAH's search runs under --protocol final only "
                            f"(its own train800/val200 search, then the final run), not with {what}")


def supernet_plan(sweep, task: Task, method: Method, seed: int) -> RunPlan:
    """The supernet run: the tune protocol's search stage, with the supernet's epochs and lr (NOAH's supernet
    script); every other training setting is the run's."""
    plan = sweep.plan(task, NoahSupernet(method.config), seed, "search")
    cfg = method.config
    train = rebuilt_train({**dataclasses.asdict(plan.train), "epochs": cfg.supernet_epochs, "lr": cfg.supernet_lr},
                          f"--methods {method_label(method)}")
    return dataclasses.replace(plan, train=train)


def run_searches(sweep, executor, log: Callable[[str], None]) -> Found:
    """The search phase: a supernet and its search per task, method and seed, through the executor; their records."""
    keys = [(task, method, seed) for task in sweep.tasks for method in sweep.methods if is_search(method)
            for seed in sweep.seeds]
    if not keys:
        return {}
    units = [Unit([supernet_plan(sweep, *key)], [f"[search] {sweep.suite.name}/{key[0].name} "
                                                 f"{method_label(key[1])} seed {key[2]}"], supernet=True)
             for key in keys]
    results = executor.run(units, sweep.job, "NOAH searches", log) or [None] * len(units)
    return {(id(method), task.name, seed): (found[0] if found else None)
            for (task, method, seed), found in zip(keys, results)}


def final_unit(sweep, found: Found, task: Task, method: Method, seed: int, prefix: str = "") -> Unit | None:
    """The final run of the searched subnet, trained from scratch; None when its search did not succeed."""
    record = found.get((id(method), task.name, seed))
    if not record or record.get("status") != "success":
        return None
    plan = final_plan(sweep, task, method, seed, record)
    searched = subnet_file(sweep, task, method, seed, record)
    search = record["noah_search"]
    extra = {"noah_search": {"run_id": record["run_id"], "record": relative(record_file(searched), sweep.out), "subnet_file": relative(searched, sweep.out), "subnet": search["subnet"],
        "subnet_params": search["subnet_params"], "val_top1": record["metrics"]["val_top1"]}}
    where = f"{prefix}{sweep.suite.name}/{task.name} {method_label(method)} seed {seed}"
    return Unit([plan], [where], extra)


def subnet_file(sweep, task: Task, method: Method, seed: int, record: dict) -> Path:
    return supernet_plan(sweep, task, method, seed).record_dir(sweep.out) / record["noah_search"]["subnet_file"]


def final_plan(sweep, task: Task, method: Method, seed: int, record: dict) -> RunPlan:
    """The final run of the subnet a successful search record chose (`status` plans it too)."""
    return sweep.plan(task, Noah(method.config, read_subnet_file(subnet_file(sweep, task, method, seed, record))), seed)


def record_file(subnet_file: Path) -> Path:
    return subnet_file.with_suffix("").with_suffix(".json")
