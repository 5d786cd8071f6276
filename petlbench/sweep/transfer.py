"""Two phases of one sweep for a transfer method (MVLPT, `--methods mvlpt:sources=a+b`): the source phase, then the
targets.

The source phase trains one run per method configuration and seed on the union of the source tasks
(petlbench.engine.multitask), whatever the number of targets. Each target task's run is then planned with the source
run's saved prompts as its initialisation: the prompts' sha256 is part of the target's configuration, so a source
run that trained again (its data or configuration changed) re-trains its targets, and an unchanged one lets them be
skipped. Each target record names its source: `mvlpt.source = {run_id, record, tasks}`. Only the `final` protocol
plans transfer runs (a tune search would re-train the source per grid point); the others refuse them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.classnames import check_classnames
from petlbench.plan import method_label
from petlbench.specs import Task
from petlbench.sweep.jobs import Unit

Sources = dict[tuple[int, int], dict | None]  # (id of the method, seed) -> the source record (None: not done)


def is_transfer(method: Method) -> bool:
    """Does the method learn on source tasks first (an option `sources` naming some)?"""
    return bool(getattr(method.config, "sources", None))


def check(sweep) -> None:
    """Refused with the command: a transfer method off the final protocol, or sources the suite lacks."""
    for method in filter(is_transfer, sweep.methods):
        if sweep.protocol != "final":
            raise UserError(f"--methods {method_label(method)}: the source phase runs under --protocol final only "
                            f"(not {sweep.protocol}); drop sources= to tune the method on each task alone")
        tasks = source_tasks(sweep, method)
        for task in tasks:
            check_classnames(task)


def source_tasks(sweep, method: Method) -> list[Task]:
    names = list(method.config.sources)
    known = {alias: t for t in sweep.suite.tasks for alias in (t.name, *t.aliases)}
    for name in names:
        if name not in known:
            raise UserError(f"--methods {method_label(method)}: source {name!r} is not a task of suite "
                            f"{sweep.suite.name!r}; valid: {', '.join(t.name for t in sweep.suite.tasks)}")
    chosen = {known[n].name: known[n] for n in names}
    if len(chosen) < 2:
        raise UserError(f"--methods {method_label(method)}: name at least two source tasks (sources=a+b)")
    return list(chosen.values())


def source_unit(sweep, method: Method, seed: int) -> Unit:
    role = type(method)(method.config, role="source")
    plans = [sweep.plan(task, role, seed) for task in source_tasks(sweep, method)]
    where = f"[source] {sweep.suite.name}/{'+'.join(p.task.name for p in plans)} {method_label(method)} seed {seed}"
    return Unit(plans, [where] * len(plans), source=True)


def run_sources(sweep, executor, log: Callable[[str], None]) -> Sources:
    """The source phase: every transfer method's source run per seed, through the executor; their records."""
    keys = [(method, seed) for method in sweep.methods if is_transfer(method) for seed in sweep.seeds]
    if not keys:
        return {}
    units = [source_unit(sweep, method, seed) for method, seed in keys]
    results = executor.run(units, sweep.job, "source runs", log) or [None] * len(units)
    return {(id(method), seed): (found[0] if found else None) for (method, seed), found in zip(keys, results)}


def target_unit(sweep, sources: Sources, task: Task, method: Method, seed: int, prefix: str = "") -> Unit | None:
    """A target task's run from the source run's prompts; None when the source run did not succeed."""
    source = sources.get((id(method), seed))
    where = f"{prefix}{sweep.suite.name}/{task.name} {method_label(method)} seed {seed}"
    if not source or source.get("status") != "success":
        return None
    extra: dict[str, Any] = {"mvlpt": {"source": {"run_id": source["run_id"],
                                                  "record": relative(Path(source["record"]), sweep.out),
                                                  "tasks": source["tasks"]}}}
    return Unit([target_plan(sweep, source, task, method, seed)], [where], extra)


def target_plan(sweep, source: dict, task: Task, method: Method, seed: int):
    """The target task's run, its method starting from the successful source record's prompts."""
    from petlbench.methods.mvlpt import SourcePrompts
    record = Path(source["record"])
    init = SourcePrompts(str((record.parent / source["prompts"]["file"]).resolve()), source["prompts"]["sha256"])
    return sweep.plan(task, type(method)(method.config, role="target", init=init), seed)


def relative(path: Path, out: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)
