"""`petlbench status --methods mvlpt:sources=a+b ...`: a transfer method's source run and its target runs.

Per method configuration and seed, the source run (on the union of the source tasks) is done, failed or missing;
each target task's run is then done, running, failed or missing as any run (its configuration holds the source
run's prompts, so it is looked up from the source record), or pending while its source run has no success. The
rows name the source run each target starts from; the notes list the targets per source run. Looking decodes no
image: the source record is found by its configuration id on any data (as status checks split files only).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from petlbench.engine.multitask import SourceRun, prompts_intact, read_source
from petlbench.plan import method_label
from petlbench.sweep.status import last_line, state_of, sweep_status
from petlbench.sweep.transfer import is_transfer, relative, source_unit, target_plan


def source_state(run: SourceRun, out: Path) -> tuple[str, dict[str, Any] | None]:
    """("done", its record) for the newest successful source record with its prompts intact; ("failed", the
    newest failed record) or ("missing", None) otherwise."""
    pattern = run.record_path(out, "*").name  # any data id
    folder = run.record_dir(out)
    found = [(p, read_source(p)) for p in [*folder.glob(pattern), folder / f"failed__{run.config_id()}.json"]]
    found = sorted([(p, r) for p, r in found if r], key=lambda pair: str(pair[1].get("finished_at")), reverse=True)
    for path, record in found:
        if record.get("status") == "success" and prompts_intact(record, path):
            return "done", record
    failed = [r for _, r in found if r.get("status") == "failed"]
    return ("failed", failed[0]) if failed else ("missing", None)


def transfer_status(sweep) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (stage "source" and "target", with the source run's id) and notes for every transfer method."""
    rows, notes, hashes = [], [], {}
    for method in filter(is_transfer, sweep.methods):
        label = method_label(method)
        for seed in sweep.seeds:
            run = SourceRun(source_unit(sweep, method, seed).plans)
            state, record = source_state(run, sweep.out)
            source_id = record["run_id"] if state == "done" else f"pending (source run {state})"
            rows.append({"task": "+".join(run.tasks), "method": label, "stage": "source", "source": record.get(
                "run_id") if record else "-", **{s: int(s == state) for s in ("done", "failed", "running", "missing")}})
            targets: dict[str, list[str]] = defaultdict(list)
            for task in sweep.tasks:
                if state == "done":
                    target, why = state_of(target_plan(sweep, record, task, method, seed), sweep.out, hashes)
                else:
                    target, why = "pending", None
                targets[target].append(task.name + (f" ({why})" if why else ""))
                rows.append({"task": task.name, "method": label, "stage": "target", "source": source_id,
                             **{s: int(s == target or (s, target) == ("missing", "pending"))
                                for s in ("done", "failed", "running", "missing")}})
            where = f"{label} seed {seed}: source run on {'+'.join(run.tasks)}"
            if state == "done":
                where += f" {record['run_id']} (done, {relative(Path(record['record']), sweep.out)})"
            elif state == "failed":
                where += f" failed: {last_line(record.get('error'))}"
            else:
                where += " missing (the next `run` trains it first)"
            notes.append(f"{where}; targets " + "; ".join(f"{k}: {', '.join(v)}" for k, v in targets.items()))
    return rows, notes


def full_status(sweep) -> tuple[list[dict[str, Any]], list[str]]:
    """The sweep's status (petlbench.sweep.status) with its transfer methods' source and target runs."""
    rows, notes = sweep_status(sweep)
    more_rows, more_notes = transfer_status(sweep)
    return rows + more_rows, notes + more_notes
