"""Executors take a phase's units, run them as jobs and return when their records exist.

`InProcess` (the default): one after another in this process, sharing one decoded-data cache.
`LocalWorkers(N)`: N spawned processes on this machine, each with its share of the physical cores
(PETLBENCH_THREADS) and, with several GPUs, its own GPU (CUDA_VISIBLE_DEVICES), so nothing is
oversubscribed. `petlbench.sweep.slurm.SlurmExecutor` sends them to a cluster. Every executor returns, per
unit, its records, or None for a unit whose job did not finish (killed, cancelled, crashed): such runs
have no record and are launched again by the next invocation.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable

from petlbench.errors import UserError
from petlbench.sweep.jobs import Job, Unit, run_job
from petlbench.engine.threads import physical_cores

Results = list  # per unit: list[dict] (its records) or None (its job did not finish)


def bundle(units: list[Unit], runs_per_job: int, make_job: Callable[[list[Unit]], Job]) -> list[tuple[Job, list[int]]]:
    """Consecutive units into jobs of at most `runs_per_job` runs (a unit is never split); with the unit indices."""
    jobs, current, runs = [], [], 0
    for i, unit in enumerate(units):
        if current and runs + len(unit.plans) > runs_per_job:
            jobs.append(current)
            current, runs = [], 0
        current.append(i)
        runs += len(unit.plans)
    if current:
        jobs.append(current)
    return [(make_job([units[i] for i in members]), members) for members in jobs]


class InProcess:
    name, in_process = "in-process", True

    def __init__(self):
        self.contexts: dict = {}  # this run's device and decoded data, shared by its phases

    def run(self, units: list[Unit], make_job, what: str, log) -> Results:
        return [run_job(make_job([unit]), log, self.contexts)[0] for unit in units]


class LocalWorkers:
    """N worker processes on this machine (spawned: a fresh interpreter, no inherited thread pools)."""
    name, in_process = "local workers", False

    def __init__(self, workers: int, runs_per_job: int = 1):
        if workers < 1:
            raise UserError(f"--workers: expected a positive integer, got {workers}")
        self.workers, self.runs_per_job = workers, runs_per_job

    def run(self, units: list[Unit], make_job, what: str, log) -> Results:
        import torch
        jobs = bundle(units, self.runs_per_job, make_job)
        share = max(1, physical_cores() // self.workers)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        results: Results = [None] * len(units)
        context = multiprocessing.get_context("spawn")
        slots = context.Queue()
        for slot in range(self.workers):
            slots.put(slot)
        log(f"{len(jobs)} jobs ({sum(j.runs for j, _ in jobs)} {what}) on {self.workers} local workers, "
            f"{share} thread{'s' if share > 1 else ''} each" + (f", {gpus} GPUs shared one per worker" if gpus > 1 else ""))
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=start_worker,
                                   initargs=(slots, gpus))
        try:
            futures = {}
            for job, members in jobs:
                job.threads = share
                futures[pool.submit(run_job, job)] = members
            done = failed = 0
            for future in as_completed(futures):
                try:
                    for member, records in zip(futures[future], future.result()):
                        results[member] = records
                    done += 1
                except Exception as exc:  # the worker died (killed, out of memory): its runs are not done
                    failed += 1
                    log(f"a worker's job did not finish ({type(exc).__name__}: {exc}); its runs have no record")
                log(f"workers: {done} done, {failed} not finished, {len(futures) - done - failed} to go")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results


def start_worker(slots, gpus: int) -> None:
    """In each worker, once: its slot number, and with several GPUs the one it owns."""
    slot = slots.get()
    if gpus > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
