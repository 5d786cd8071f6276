"""`--executor slurm` on a real Slurm cluster (CI starts one with .ci/slurm-up.sh): a tune sweep end to end,
a re-run that submits nothing, a cancelled job that shows as not done and is launched by the next run.

Skipped when no cluster is configured ($SLURM_CONF unset or `sinfo` failing); failed instead when
PETLBENCH_REQUIRE_SLURM=1, so CI cannot silently skip a broken cluster.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from petlbench.records import load_records
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite

SLURM_FLAGS = ("--executor", "slurm", "--cpus", "1", "--mem-gb", "1", "--time-min", "5")


@pytest.fixture(scope="module")
def cluster():
    why = None
    if not os.environ.get("SLURM_CONF") or shutil.which("sinfo") is None:
        why = "no Slurm cluster configured ($SLURM_CONF unset or no sinfo)"
    else:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0 or not probe.stdout.strip():
            why = f"the Slurm cluster does not answer: {probe.stderr.strip() or 'no nodes'}"
    if why is not None:
        if os.environ.get("PETLBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"PETLBENCH_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)


def sweep(suite, data, out, *extra):
    return petlbench_cli("run", "--suite", str(suite), "--methods", "linear,bitfit", "--data-root", str(data),
                         "--out", str(out), "--quiet", "--no-weights", *SLURM_FLAGS, *extra, timeout=900)


def test_tune_sweep_through_slurm_end_to_end(cluster, tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    tune = ("--protocol", "tune", "--grid", "{lr: [0.5, 0.05], weight_decay: [0.0]}", "--seeds", "0,1")
    first = sweep(suite, tiny_tasks, out, *tune)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted" in first.stdout and "slurm: " in first.stdout
    records = load_records(out)
    search = [r for r in records if r["protocol"]["stage"] == "search"]
    finals = [r for r in records if r["protocol"]["stage"] == "final"]
    assert len(search) == 4 and len(finals) == 4 and all(r["status"] == "success" for r in records)
    assert all(r["env"]["device"]["host"] for r in records)  # each job recorded where it ran
    assert all(r["metrics"]["cpu_threads"] == [1] for r in finals)  # --cpus 1: the job's threads
    assert len(list(out.rglob("*__selection__*.json"))) == 2
    table = petlbench_cli("table", str(out))
    assert table.returncode == 0 and "bitfit" in table.stdout and "linear" in table.stdout

    jobs_before = sorted(p.name for p in (out / ".slurm").iterdir())
    again = sweep(suite, tiny_tasks, out, *tune)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted" not in again.stdout and again.stdout.count("nothing to submit") == 2
    assert sorted(p.name for p in (out / ".slurm").iterdir()) == jobs_before
    assert len(load_records(out)) == len(records)


def test_a_cancelled_job_is_not_done_and_the_next_run_launches_it(cluster, tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    held = sweep(suite, tiny_tasks, out, "--seeds", "0,1", "--no-wait", "--sbatch", "begin=now+600")  # queued only
    assert held.returncode == 0, held.stdout + held.stderr
    array = re.search(r"as array (\d+)", held.stdout).group(1)
    subprocess.run(["scancel", array], check=True, timeout=30)
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "scancel did not empty the queue"
        time.sleep(0.5)
    assert not load_records(out)
    status = petlbench_cli("status", str(out), "--suite", str(suite), "--methods", "linear,bitfit", "--data-root",
                           str(tiny_tasks), "--seeds", "0,1", "--format", "json")
    rows = json.loads(status.stdout)["rows"]
    assert sum(r["missing"] for r in rows) == 4 and sum(r["done"] for r in rows) == 0

    final = sweep(suite, tiny_tasks, out, "--seeds", "0,1")
    assert final.returncode == 0, final.stdout + final.stderr
    assert "submitted 4 jobs" in final.stdout
    records = load_records(out)
    assert len(records) == 4 and all(r["status"] == "success" for r in records)


def test_a_refused_submission_is_one_line(cluster, tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    refused = sweep(suite, tiny_tasks, tmp_path / "results", "--partition", "no_such_partition")
    assert_one_line_error(refused, "--executor slurm", "sbatch refused", "partition")
