"""`--executor slurm`: a phase's jobs go to Slurm through submitit, as one array job.

Each Slurm job runs `petlbench.sweep.jobs.run_job` on its node, which picks the node's device and uses the
job's CPUs. Runs already done (a successful record of the same configuration on the same split files)
are not submitted. The job is checkpointable: on preemption or near its time limit Slurm signals it,
submitit requeues it, and the requeued job skips the runs whose records exist. A cancelled or failed job
leaves its unfinished runs without a record; the next `petlbench run` launches them again.
Slurm queues a job no node can hold and leaves it pending forever, so the job size is checked against the
partition's nodes before submitting, and pending jobs whose reason cannot resolve are cancelled and reported
instead of waited on (petlbench.sweep.cluster).
Options: flags, over a named profile of a YAML file (`--slurm-config`, `--slurm-profile`), over defaults.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Optional

from petlbench.errors import UserError
from petlbench.sweep.cluster import JobSize, check_fits, job_list, job_partition, slurm_command, stuck_jobs
from petlbench.sweep.executors import Results, bundle
from petlbench.sweep.jobs import Unit, run_job
from petlbench.options import Range, build, read_yaml
from petlbench.sweep.status import done_record

CONFIG_FILES = (Path("petlbench-slurm.yaml"), Path("~/.config/petlbench/slurm.yaml"))


@dataclass
class SlurmOptions:
    partition: Optional[str] = None  # default: the cluster's default partition
    time_min: Annotated[int, Range(min=1)] = 60  # per Slurm job (a bundle of --runs-per-job runs)
    gpus: Annotated[int, Range(min=0)] = 0  # per job; 1 on a GPU cluster
    cpus: Annotated[int, Range(min=1)] = 4  # per job; the job's torch threads
    mem_gb: Annotated[float, Range(gt=0)] = 16.0
    max_parallel: Annotated[int, Range(min=1)] = 256  # jobs in flight (the array's %N)
    signal_delay_s: Annotated[int, Range(min=10)] = 120  # the signal before the time limit that requeues a job
    poll_s: Annotated[float, Range(gt=0)] = 10.0  # how often the waiting command checks the jobs
    sbatch: dict = field(default_factory=dict)  # further sbatch options, e.g. {account: proj, qos: high}


def slurm_options(config: str | None, profile: str | None, flags: dict[str, Any]) -> SlurmOptions:
    """Defaults < the profile (a top-level key of the YAML file) < flags."""
    values: dict[str, Any] = {}
    path = Path(config).expanduser() if config else next((p.expanduser() for p in CONFIG_FILES
                                                          if p.expanduser().is_file()), None)
    if config and not path.is_file():
        raise UserError(f"--slurm-config {config}: file not found")
    if profile and path is None:
        raise UserError(f"--slurm-profile {profile}: no Slurm config file (give --slurm-config FILE, or create "
                        f"{' or '.join(map(str, CONFIG_FILES))})")
    if path is not None:
        values = profile_values(path, profile)
    values.update({k: v for k, v in flags.items() if v is not None})
    where = f"{path}: profile {profile or 'default'}" if path else "Slurm options"
    options = build(SlurmOptions, values, where)
    if not isinstance(options.sbatch, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                                       for k, v in options.sbatch.items()):
        raise UserError(f"{where}: option 'sbatch' expects a mapping of sbatch option names to values, "
                        f"e.g. {{account: proj, qos: high}}, got {options.sbatch!r}")
    return options


def profile_values(path: Path, profile: str | None) -> dict[str, Any]:
    """The options of one profile of a Slurm config file: a YAML mapping of profile names to option mappings."""
    data = read_yaml(path, "a YAML mapping of profile names to Slurm options")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of profile names to Slurm options, e.g. "
                        f"default: {{cpus: 8, mem_gb: 32}}; got a {type(data).__name__}")
    options = [key for key in data if key in {f.name for f in fields(SlurmOptions)}]
    if options:
        raise UserError(f"{path}: top-level key {options[0]!r} is a Slurm option, but top-level keys name profiles; "
                        f"write it under one, e.g. default: {{{options[0]}: ...}}")
    name = profile or "default"
    if name not in data and (profile or data):
        raise UserError(f"{path}: no profile {name!r}; profiles: {', '.join(map(str, data)) or 'none'}"
                        + ("" if profile else " (pass --slurm-profile NAME, or add a 'default' profile)"))
    values = data.get(name)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: profile {name!r}: expected a mapping of options, e.g. {{cpus: 8, mem_gb: 32}}; "
                        f"got {values!r}")
    return dict(values)


class SlurmRun:
    """What a Slurm job calls; checkpointable so that preemption and time limits requeue it."""

    def __call__(self, job):
        return run_job(job)

    def checkpoint(self, job):
        import submitit
        return submitit.helpers.DelayedSubmission(SlurmRun(), job)


class SlurmExecutor:
    name, in_process = "slurm", False

    def __init__(self, options: SlurmOptions, runs_per_job: int = 1, wait: bool = True):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError("--executor slurm needs submitit: pip install submitit") from None
        if shutil.which("sbatch") is None:
            raise UserError("--executor slurm: no `sbatch` on PATH; run this on a Slurm login node")
        self.options, self.runs_per_job, self.wait = options, runs_per_job, wait
        self.size = JobSize(options.cpus, options.mem_gb, options.gpus)
        self.partition = check_fits(self.size, job_partition(options.partition, options.sbatch))  # before any job

    def run(self, units: list[Unit], make_job, what: str, log) -> Results | None:
        import submitit
        results: Results = [None] * len(units)
        todo, out, hashes = [], make_job([]).out, {}
        for i, unit in enumerate(units):
            records = [done_record(p, out, hashes) for p in unit.plans]  # not submitted again
            if all(records):
                results[i] = records
            else:
                todo.append(i)
        if not todo:
            log(f"slurm: all {len(units)} units of {what} done before; nothing to submit")
            return results
        jobs = bundle([units[i] for i in todo], self.runs_per_job, make_job)
        o = self.options
        for job, _ in jobs:
            job.threads = o.cpus
        executor = submitit.AutoExecutor(folder=out / ".slurm" / "%j", cluster="slurm")
        executor.update_parameters(
            name="petlbench", timeout_min=o.time_min, cpus_per_task=o.cpus, mem_gb=o.mem_gb,
            slurm_array_parallelism=o.max_parallel, slurm_signal_delay_s=o.signal_delay_s,
            slurm_additional_parameters={k: str(v) for k, v in o.sbatch.items()},
            **({"slurm_partition": o.partition} if o.partition else {}),
            **({"gpus_per_node": o.gpus} if o.gpus else {}))
        with captured_stderr() as said:  # sbatch writes its refusal to our stderr too: one line, ours
            try:
                submitted = executor.map_array(SlurmRun(), [job for job, _ in jobs])
            except Exception as exc:  # sbatch refused (unknown partition, bad option): its own message
                said.append(str(exc))
        if said:
            raise UserError(f"--executor slurm: sbatch refused the jobs: {last_line(Exception(said[-1]))}")
        array = submitted[0].job_id.split("_")[0]
        log(f"slurm: {len(units) - len(todo)} units of {what} done before; submitted {len(jobs)} jobs "
            f"({sum(j.runs for j, _ in jobs)} runs) as array {array}; logs in {out / '.slurm'}")
        if not self.wait:
            log(f"slurm: --no-wait: `squeue -j {array}` follows them; `petlbench status {out}` shows what is done; "
                "the same command again collects them (and launches what is missing)")
            return None
        stuck = self.collect(submitted, jobs, results, todo, log)
        if stuck:
            runs = {job.job_id: bundled.runs for job, (bundled, _) in zip(submitted, jobs)}
            raise UserError(stuck_message(stuck, runs, out))
        return results

    def collect(self, submitted, jobs, results: Results, todo: list[int], log) -> dict[str, list[str]]:
        """Wait for the jobs and fill `results`; pending jobs that can never start are cancelled and returned
        (reason -> job ids) instead of waited on."""
        from submitit.core.utils import UncompletedJobError
        last, delay, stuck = None, 1.0, {}
        while True:
            cancelled = {i for ids in stuck.values() for i in ids}  # sacct may never list them one by one
            live = [job for job in submitted if job.job_id not in cancelled]
            counts = summarize([job.state for job in live])
            line = ", ".join(f"{n} {k}" for k, n in counts.items() if n) + (
                f"{', ' if live else ''}{len(cancelled)} cancelled (cannot start)" if cancelled else "")
            if line != last:
                log(f"slurm: {line}")
                last = line
            if counts["pending"] == counts["running"] == 0 and all(job.done() for job in live):
                break
            if counts["pending"] and self.cancel_stuck([job.job_id for job in live], stuck, log):
                continue  # some were just cancelled: count again now
            time.sleep(delay)
            delay = min(self.options.poll_s, delay * 1.5)  # quick at first: short jobs are seen at once
        for job, (_, members) in zip(submitted, jobs):
            if job.job_id in cancelled:
                continue
            try:
                for member, records in zip(members, job.result()):
                    results[todo[member]] = records
            except UncompletedJobError as exc:
                log(f"slurm: job {job.job_id} did not finish ({last_line(exc)}); its runs have no record")
            except Exception as exc:  # the job raised: its finished runs have records, the rest do not
                log(f"slurm: job {job.job_id} failed: {last_line(exc)}")
        return stuck

    def cancel_stuck(self, job_ids: list[str], stuck: dict[str, list[str]], log) -> bool:
        """Cancel the pending jobs squeue says cannot start (nothing that could still run); add them to `stuck`.
        True when it found some."""
        seen = {i for ids in stuck.values() for i in ids}
        found = stuck_jobs([i for i in job_ids if i not in seen], self.size, self.partition)
        for why, ids in found.items():
            log(f"slurm: jobs {job_list(ids)} cannot start, {why}; cancelling them")
            stuck.setdefault(why, []).extend(ids)
        if found:
            try:
                slurm_command(["scancel", "--state=PENDING", *[i for ids in found.values() for i in ids]])
            except UserError as exc:
                log(f"slurm: {exc}")
        return bool(found)


def stuck_message(stuck: dict[str, list[str]], runs: dict[str, int], out: Path) -> str:
    """One line: which jobs cannot start and why, that they were cancelled, and that their runs are not done."""
    why = "; ".join(f"jobs {job_list(ids)} cannot start, {reason}" for reason, ids in stuck.items())
    count = sum(runs.get(i, 0) for ids in stuck.values() for i in ids)
    return (f"--executor slurm: {why}; cancelled them: their {count} run(s) have no record (`petlbench status {out}` "
            "shows them missing); the same command runs them once that is fixed")


def summarize(states: list[str]) -> dict[str, int]:
    """Slurm's job states as done / running / failed / pending."""
    counts = {"done": 0, "running": 0, "failed": 0, "pending": 0}
    for state in states:
        state = state.split()[0].upper()
        if state == "COMPLETED":
            counts["done"] += 1
        elif state in ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT"):
            counts["running"] += 1
        elif state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "UNKNOWN",
                       "READY"):
            counts["pending"] += 1
        else:  # FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE
            counts["failed"] += 1
    return counts


@contextmanager
def captured_stderr():
    """File descriptor 2 into a temp file while sbatch runs (a child process writes there, not to sys.stderr), and
    sys.stderr too (submitit repeats sbatch's words there; in a notebook or under the Python API it is no file)."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink, redirect_stderr(sink):
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
