"""Plan, then execute: a sweep becomes phases of independent jobs, each handed to an executor.

`final`: one phase, a job per run. `tune`: the search (per task and method, every grid point; a
head-only grid stays one unit so it trains at once), then the selection (cheap, here, from the search
records), then the finals with the chosen point. A job is plain data (petlbench.sweep.jobs.Job): it picks its
device, threads and cache where it runs, so the same phases run in this process, in local workers or
as Slurm jobs (petlbench.sweep.executors, petlbench.sweep.slurm).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from petlbench.errors import UserError
from petlbench.data.shots import few_shot_protocol
from petlbench.data import classsplit
from petlbench.engine import newclasses
from petlbench.sweep.jobs import Job, Unit
from petlbench.method import Method
from petlbench.params import meta_counts
from petlbench.plan import RunPlan, method_label, plan_one, tune_grid
from petlbench.registry import available_methods
from petlbench.backbone import BackboneSpec
from petlbench.specs import Task
from petlbench.suite import Suite
from petlbench.sweep import noah_search, paper, transfer
from petlbench.sweep.tune import apply_point, choose, grid_points, write_selection


@dataclass
class Sweep:
    """One `petlbench run` command, resolved: what to run and where records go (not where it runs)."""
    suite: Suite
    tasks: list[Task]
    methods: list[Method]
    seeds: list[int]
    backbone: BackboneSpec
    overrides: dict[str, Any]
    recipe: str | None
    grid: dict[str, list] | None
    protocol: str
    data_root: Path
    out: Path
    device: str = "auto"  # resolved by each job where it runs
    cache_dir: str | None = None  # resolved path, or "none"
    save_weights: bool = True
    progress: bool | None = None
    save_samples: bool = True
    paper: Any = None  # petlbench.sweep.paper.Paper under --protocol paper: the source's settings
    shots: int | None = None  # --shots K: K training images per class per seed (petlbench.data.shots)
    base_to_new: bool = False  # --base-to-new: train on the base classes, test on base and new (data.classsplit)

    def plan(self, task: Task, method: Method, seed: int, stage: str | None = None) -> RunPlan:
        found = self.plan_protocol(task, method, seed, stage)
        if not self.base_to_new:
            return found
        found = replace(found, protocol=classsplit.protocol(found.protocol))
        newclasses.check(found)  # a head that cannot classify new names is refused here, before any run
        return found

    def plan_protocol(self, task: Task, method: Method, seed: int, stage: str | None = None) -> RunPlan:
        """The run under its protocol and shots, before the class split."""
        if self.protocol == "paper":
            found = paper.plan(self, task, method, seed)
            return replace(found, protocol=few_shot_protocol(found.protocol, self.suite.splits, self.shots))
        protocol = self.suite.protocol("final") if stage is None else self.suite.protocol("tune", stage)
        return plan_one(self.suite, task, method, self.backbone, seed, self.overrides, self.recipe,
                        few_shot_protocol(protocol, self.suite.splits, self.shots), self.data_root)

    def job(self, units: list[Unit]) -> Job:
        return Job(units, self.out, self.device, self.cache_dir, self.save_weights, self.progress,
                   save_samples=self.save_samples)


@dataclass
class Search:
    """The search of one task and method: its grid points and the units that train them."""
    base: RunPlan
    space: dict[str, list]
    points: list[dict[str, Any]]
    units: list[Unit]
    where: str


class Records(list):
    """The final records of a sweep; `not_done`: runs without a record (their job was killed, cancelled, or
    is still queued under --no-wait); the next invocation launches them again."""
    not_done = 0


def run_sweep(sweep: Sweep, executor, log: Callable[[str], None]) -> Records:
    """Every phase of the sweep through `executor`; the final records (fewer when some job did not finish)."""
    if not executor.in_process:
        refuse_runtime_methods(sweep.methods, executor.name)
    if sweep.protocol == "final":
        sources = transfer.run_sources(sweep, executor, log)  # a transfer method's source phase (MVLPT), once
        combos = [(task, method, seed) for task in sweep.tasks for method in sweep.methods for seed in sweep.seeds]
        searched = noah_search.run_searches(sweep, executor, log)  # noah:subnet=search's search phase (NOAH)
        units = [(transfer.target_unit(sweep, sources, *combo, f"[{i}/{len(combos)}] ") if transfer.is_transfer(combo[1])
                  else noah_search.final_unit(sweep, searched, *combo, f"[{i}/{len(combos)}] ")
                  if noah_search.is_search(combo[1])
                  else final_unit(sweep, *combo, f"[{i}/{len(combos)}] ")) for i, combo in enumerate(combos, 1)]
        ready = [u for u in units if u is not None]  # None: a target whose source run did not succeed
        done = collect(ready, executor.run(ready, sweep.job, "runs", log), log) if ready else Records()
        done.not_done += len(units) - len(ready)
        return done
    if sweep.protocol == "paper":
        units = paper.units(sweep)
        return collect(units, executor.run(units, sweep.job, "runs", log), log)
    searches = [search(sweep, task, method) for task in sweep.tasks for method in sweep.methods]
    results = executor.run([u for s in searches for u in s.units], sweep.job, "search runs", log)
    if results is None:
        return collect([u for s in searches for u in s.units], None, log)
    finals, cursor, unfinished = [], 0, 0
    for s in searches:
        records = results[cursor:cursor + len(s.units)]
        cursor += len(s.units)
        if any(r is None for r in records):
            unfinished += len(sweep.seeds)
            log(f"{s.where}: the search did not finish ({sum(r is None for r in records)} unit(s) not done); "
                "run the same command again")
            continue
        chosen_units = select(sweep, s, [r for unit_records in records for r in unit_records], log)
        finals += chosen_units
    done = collect(finals, executor.run(finals, sweep.job, "final runs", log), log) if finals else Records()
    done.not_done += unfinished
    return done


def final_unit(sweep: Sweep, task: Task, method: Method, seed: int, prefix: str = "") -> Unit:
    plan = sweep.plan(task, method, seed)
    return Unit([plan], [f"{prefix}{plan.suite.name}/{task.name} {method_label(method)} seed {seed}"])


def search(sweep: Sweep, task: Task, method: Method) -> Search:
    base = sweep.plan(task, method, sweep.seeds[0], "search")
    space = sweep.grid or tune_grid(method, base.recipe)
    where = f"{sweep.suite.name}/{task.name} {method_label(method)}"
    points = grid_points(space, base, "--grid" if sweep.grid else f"recipe {base.recipe.name}")
    plans = [apply_point(base, point, where) for point in points]
    for plan in plans:  # a grid point's method options (a bottleneck, a rank) must fit the backbone too
        meta_counts(plan.backbone, plan.method)
    wheres = [f"[tune {i}/{len(points)}] {where} " + " ".join(f"{k}={v}" for k, v in point.items())
              for i, point in enumerate(points, 1)]
    if trains_head_only(base):  # one unit: the grid trains at once on cached features (petlbench.engine.headgrid)
        units = [Unit(plans, wheres, search=True)]
    else:  # a unit per point: independent jobs
        units = [Unit([p], [w], search=True) for p, w in zip(plans, wheres)]
    return Search(base, space, points, units, where)


def select(sweep: Sweep, s: Search, records: list[dict], log: Callable[[str], None]) -> list[Unit]:
    """Choose on val from the search records, write the selection file, and plan the finals with the choice."""
    results = list(zip(s.points, records))
    chosen = choose(results)
    selection_file = write_selection(s.base, s.space, results, chosen, sweep.out)
    if chosen is None:
        log(f"{s.where}: FAILED: no grid point finished; see {selection_file}")
        return []
    log(f"{s.where}: chose {chosen} on val ({selection_file.name})")
    extra = {"selection": {"file": str(selection_file.relative_to(sweep.out)), "chosen": chosen,
                           "grid_points": len(s.points)}}
    units = []
    for seed in sweep.seeds:
        final = apply_point(sweep.plan(s.base.task, s.base.method, seed, "final"), chosen, s.where)
        units.append(Unit([final], [f"[final] {s.where} seed {seed}"], extra))
    return units


def trains_head_only(plan: RunPlan) -> bool:
    """Does the method train only the head? The model built as every run builds it, on the meta device (planning's
    build, params.meta_counts): it decides whether a grid stays one unit (trained at once) or splits. A method that
    cannot be built on the meta device: its points run as separate jobs."""
    counts = meta_counts(plan.backbone, plan.method)
    return counts is not None and counts.trainable == counts.head


def refuse_runtime_methods(methods: list[Method], executor: str) -> None:
    runtime = [m.name for m in methods if available_methods()[m.name].origin == "runtime"]
    if runtime:
        raise UserError(f"method {runtime[0]!r} was registered at run time in this process, which {executor} "
                        "workers cannot see; publish it as an entry point (group 'petlbench.methods', see README "
                        "'Adding a method') or use the default in-process executor")


def collect(units: list[Unit], results: list[list[dict] | None] | None, log: Callable[[str], None]) -> Records:
    """The records of the units whose jobs finished; the others counted as not done and said."""
    records = Records(r for unit in results or [] if unit is not None for r in unit)
    records.not_done = sum(len(u.plans) for u, r in zip(units, results or [None] * len(units)) if r is None)
    if records.not_done and results is not None:
        log(f"{records.not_done} run(s) did not finish (no record); the same command again launches them")
    return records
