"""A job: runs to execute together, as plain data that travels to a worker process or a Slurm node, and
`run_job`, what executes it there. The job picks its device, CPU threads and cache where it runs.

Two processes never train the same run: each run holds a lock file (fcntl, released by the kernel even
on SIGKILL) while it trains, and a second process waits for it, then finds the record and skips. A
record is written atomically at the end of its run, so a killed job leaves no record and the next
invocation runs it again.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from petlbench.errors import UserError
from petlbench.plan import RunPlan


@dataclass
class Unit:
    """Runs that execute together: one run, or the points of a head-only tune grid (trained at once)."""
    plans: list[RunPlan]
    wheres: list[str]  # the progress line's prefix per run
    extra: dict[str, Any] | None = None  # added to each record (a final's selection)
    search: bool = False
    source: bool = False  # the plans are one source run's tasks (petlbench.engine.multitask, a transfer method)
    supernet: bool = False  # the plan is NOAH's supernet and search (petlbench.engine.noah_search)


@dataclass
class Job:
    units: list[Unit]
    out: Path
    device: str = "auto"
    cache_dir: Path | None = None
    save_weights: bool = True
    progress: bool | None = None
    threads: int | None = None  # CPU threads for the job (local workers, Slurm cpus per task); None: the ledger's
    env: dict[str, str] = field(default_factory=dict)  # set in the process that runs the job (CUDA_VISIBLE_DEVICES)
    save_samples: bool = True  # final runs' per-image top-5 beside the record (petlbench.engine.samples)

    @property
    def runs(self) -> int:
        return sum(len(u.plans) for u in self.units)


_CONTEXTS: dict[tuple, Any] = {}


def context(device: str, cache_dir: Path | None, contexts: dict | None = None):
    """The device and the split cache, kept across the jobs of one worker process (a task decoded once per
    worker) or, in-process, of one `run` call (`contexts`: a later call must see files changed since)."""
    from petlbench.engine.device import pick_device
    from petlbench.engine.features import RunCache
    contexts = _CONTEXTS if contexts is None else contexts
    key = (device, str(cache_dir))
    if key not in contexts:
        contexts[key] = (pick_device(device), RunCache(cache_dir))
    return contexts[key]


def run_job(job: Job, log: Callable[[str], None] | None = None, contexts: dict | None = None) -> list[list[dict]]:
    """Execute every unit of the job here; the records per unit (each also written to its file)."""
    from petlbench.engine import threads
    from petlbench.engine.execute import execute
    from petlbench.engine.headgrid import execute_grid
    log = log or say
    os.environ.update(job.env)
    if job.threads:
        os.environ[threads.THREADS_ENV] = str(job.threads)
    elif os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit() and threads.THREADS_ENV not in os.environ:
        os.environ[threads.THREADS_ENV] = os.environ["SLURM_CPUS_PER_TASK"]
    device, cache = context(job.device, job.cache_dir, contexts)
    threads.register()
    results = []
    for unit in job.units:
        with run_locks(unit.plans, job.out, unit.wheres, log):
            if unit.search:
                results.append(execute_grid(unit.plans, job.out, device, cache, job.progress, log, unit.wheres))
            elif unit.source:
                from petlbench.engine.multitask import SourceRun, execute_source
                results.append([execute_source(SourceRun(unit.plans), job.out, device, cache, job.progress, log,
                                               unit.wheres[0])])
            elif unit.supernet:
                from petlbench.engine.noah_search import execute_supernet
                results.append([execute_supernet(unit.plans[0], job.out, device, cache, job.progress, log,
                                                 unit.wheres[0])])
            else:
                results.append([execute(plan, job.out, device, cache, job.progress, log, where, unit.extra,
                                        job.save_weights, job.save_samples)
                                for plan, where in zip(unit.plans, unit.wheres)])
    return results


def lock_path(plan: RunPlan, out: Path) -> Path:
    return plan.record_dir(out) / f".{plan.record_stem()}__{plan.config_id()}.lock"


@contextmanager
def run_locks(plans: list[RunPlan], out: Path, wheres: list[str], log: Callable[[str], None]):
    """Hold every run's lock (in path order, so two processes never wait on each other in a circle)."""
    with ExitStack() as stack:
        for path, where in sorted(zip((lock_path(p, out) for p in plans), wheres)):
            if path.is_dir():
                raise UserError(f"{path}: a folder where the run's lock file goes; move it away and run again")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = stack.enter_context(open(path, "a"))
            except OSError as exc:
                raise UserError(f"{path}: cannot create the run's lock file ({exc.strerror or exc})") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"{where}: running in another process; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def is_running(plan: RunPlan, out: Path) -> bool:
    """Does some process hold this run's lock now (training it)?"""
    path = lock_path(plan, out)
    return path.is_file() and lock_held(path)


def lock_held(path: Path) -> bool:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def say(line: str) -> None:
    """Progress lines reach a log file as each run ends (nohup, `| tee`, Slurm logs), not minutes later."""
    print(line, flush=True)
