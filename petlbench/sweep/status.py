"""`petlbench status RESULTS [--suite S --methods ...]`: what is done, failed (and why), running and missing.

Without --methods: every record under RESULTS, per suite, task and method. With a suite and methods (the
`run` command's own flags): every run that command would make, as done, failed, running (a process holds
its lock) or missing; under `--protocol tune` the search points, and the finals once a selection exists.
Looking is cheap: no image is decoded. A run counts as done when a successful record of its
configuration exists on the same split files (a change inside image files is found when the run executes)
and its task weights are the ones the run saved (a run whose weights are lost, missing or changed is
missing, and the notes say why).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from petlbench.sweep.jobs import is_running, lock_held
from petlbench.sweep import noah_search
from petlbench.data.layouts import find_task_dir, split_file, split_sha256
from petlbench.errors import UserError
from petlbench.plan import RunPlan, method_label
from petlbench.records import current, is_finished, read_record, recency, record_files
from petlbench.weights import weights_problem
from petlbench.sweep.transfer import is_transfer

STATES = ("done", "failed", "running", "missing")


def config_records(plan: RunPlan, out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable record of the plan's configuration (any data) with its path, the last used first."""
    paths = plan.record_dir(out).glob(f"{plan.record_stem()}__{plan.config_id()}*.json")
    found = [(p, r) for p, r in ((p, read_record(p)) for p in paths) if r]
    return sorted(found, key=lambda pair: recency(pair[1]), reverse=True)


def same_split_files(plan: RunPlan, record: dict[str, Any], hashes: dict[Path, str]) -> bool:
    """The record's split files hash as today's (`hashes`: each file hashed once per sweep, not per run)."""
    recorded = (record.get("data") or {}).get("split_files_sha256")
    if not isinstance(recorded, dict):
        return True  # records of the batched grid do not hold them; their data id still guards the run
    task_dir = find_task_dir(plan.data_root, plan.task)
    try:
        for split, digest in recorded.items():
            path = (split_file(plan.suite.layout, task_dir, split), plan.task.name)  # domainbed: a task per domain
            if path not in hashes:
                hashes[path] = split_sha256(plan.suite.layout, task_dir, plan.task, split)[:16]
            if hashes[path] != digest:
                return False
        return True
    except (OSError, UserError):
        return False


def done_record(plan: RunPlan, out: Path, hashes: dict[Path, str] | None = None) -> dict[str, Any] | None:
    """The newest successful record of the plan's configuration on the current split files, its weights intact."""
    return done_or_why(plan, out, {} if hashes is None else hashes)[0]


def done_or_why(plan: RunPlan, out: Path, hashes: dict[Path, str]) -> tuple[dict[str, Any] | None, str | None]:
    """(the done record, None), or (None, why a successful record on these split files is not done: its weights)."""
    why = None
    for path, record in config_records(plan, out):
        if is_finished(record, plan.metric) and same_split_files(plan, record, hashes):
            problem = weights_problem(record, path)
            if problem is None:
                return record, None
            why = why or problem
    return None, why


def state_of(plan: RunPlan, out: Path, hashes: dict[Path, str]) -> tuple[str, str | None]:
    """(state, why: the error's last line for a failed run, the weights' problem for a missing one)."""
    done, why = done_or_why(plan, out, hashes)
    if done:
        return "done", None
    if is_running(plan, out):
        return "running", None
    if why:
        return "missing", f"{why}; the next run trains it again"
    records = config_records(plan, out)
    if records and records[0][1].get("status") == "failed":
        return "failed", last_line(records[0][1].get("error"))
    return "missing", None


def expected(sweep) -> list[tuple[str, RunPlan]]:
    """Every run of the sweep's command, as (stage, plan): finals, or the tune search and chosen finals; not a
    transfer method's (their targets' configuration depends on the source run's prompts)."""
    from petlbench.sweep.phases import search
    from petlbench.sweep.tune import apply_point
    runs = []
    for task in sweep.tasks:
        for method in sweep.methods:
            if is_transfer(method):
                continue  # its source and target runs: petlbench.sweep.transfer_status
            if sweep.protocol == "final" and noah_search.is_search(method):  # its search, then the chosen subnet
                for seed in sweep.seeds:
                    plan = noah_search.supernet_plan(sweep, task, method, seed)
                    found = next((r for _, r in config_records(plan, sweep.out) if r.get("status") == "success"), None)
                    runs += [("search", plan)] + ([("final", noah_search.final_plan(sweep, task, method, seed, found))]
                                                  if found else [])
                continue
            if sweep.protocol in ("final", "paper"):
                runs += [(sweep.protocol, sweep.plan(task, method, seed)) for seed in sweep.seeds]
                continue
            s = search(sweep, task, method)
            runs += [("search", p) for unit in s.units for p in unit.plans]
            chosen = newest_selection(s.base, sweep.out)
            if chosen is not None:
                runs += [("final", apply_point(sweep.plan(task, method, seed, "final"), chosen, s.where))
                         for seed in sweep.seeds]
    return runs


def newest_selection(base: RunPlan, out: Path) -> dict | None:
    from petlbench.sweep.tune import selection_files
    selections = []
    for path in selection_files(base, out):
        try:
            selections.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    selections = [s for s in selections if isinstance(s, dict) and s.get("chosen")]
    return max(selections, key=lambda s: str(s.get("written_at")))["chosen"] if selections else None


def sweep_status(sweep) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows per task and method (counts per state) and the failed runs' lines."""
    counts: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    failures, hashes = [], {}
    for stage, plan in expected(sweep):
        state, error = state_of(plan, sweep.out, hashes)
        counts[(plan.task.name, method_label(plan.method), stage)][state] += 1
        if error:
            failures.append(f"{plan.task.name} {plan.record_stem()}: {error}")
    rows = [{"task": task, "method": method, "stage": stage, **c} for (task, method, stage), c in counts.items()]
    return rows, failures


def records_status(out: Path, suite: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows per suite, task and method from the records on disk (the last used per configuration); a success
    whose task weights are lost, missing or changed is not done (`run` trains it again), and the notes say why."""
    counts: dict[tuple, dict[str, int]] = defaultdict(lambda: {"done": 0, "failed": 0, "missing": 0})
    failures = []
    files = record_files(out, warn)
    path_of = {id(r): p for p, r in files}
    for r in current([r for _, r in files], warn):
        if suite and r.get("suite") != suite:
            continue
        stage = (r.get("protocol") or {}).get("stage") or ("paper" if (r.get("protocol") or {}).get("name") == "paper"
                                                             else "final")
        key = (r.get("suite"), r.get("task"), (r.get("method") or {}).get("label"), stage)
        where = f"{r.get('suite')}/{r.get('task')} {(r.get('method') or {}).get('label')} seed {r.get('seed')}"
        problem = weights_problem(r, path_of[id(r)]) if r.get("status") == "success" else None
        if problem:
            counts[key]["missing"] += 1
            failures.append(f"{where}: {problem}; the next run trains it again")
        elif r.get("status") == "success":
            counts[key]["done"] += 1
        else:
            counts[key]["failed"] += 1
            failures.append(f"{where}: {last_line(r.get('error'))}")
    running = sum(1 for lock in out.rglob(".*.lock") if lock.is_file() and lock_held(lock))
    rows = [{"suite": s, "task": t, "method": m, "stage": st, **c} for (s, t, m, st), c in sorted(counts.items(),
                                                                                                key=str)]
    if running:
        failures.insert(0, f"{running} run(s) running now (their lock is held)")
    return rows, failures


def warn(message: str) -> None:
    """A record that cannot be read is named and skipped: the rest of the folder is still shown."""
    print(f"petlbench: warning: {message}", file=sys.stderr, flush=True)


def last_line(error: Any) -> str:
    lines = [line for line in str(error or "unknown error").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
