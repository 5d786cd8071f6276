"""Local workers, two `petlbench run` processes on one results folder, SIGKILL mid-run, `status`, Slurm options."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import petlbench
from petlbench.errors import UserError
from petlbench.sweep.jobs import lock_held
from petlbench.method import Method
from petlbench.records import load_records
from petlbench.registry import unregister_method
from petlbench.sweep.slurm import slurm_options
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite


def run_cli(suite, data, out, *extra):
    return petlbench_cli("run", "--suite", str(suite), "--methods", "linear,bitfit", "--data-root", str(data),
                         "--out", str(out), "--quiet", "--seeds", "0,1", "--no-weights", *extra, process=True)


def assert_complete(out, expected: int):
    """Every run of the sweep exactly once, successful; no temp file left behind."""
    records = load_records(out)
    keys = Counter((r["task"], r["method"]["label"], r["seed"]) for r in records)
    assert len(keys) == expected and set(keys.values()) == {1}, keys
    assert all(r["status"] == "success" for r in records)
    assert not list(out.rglob("*.tmp"))
    return records


def test_local_workers_split_the_cores_and_lose_nothing(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    out = tmp_path / "results"
    proc = run_cli(suite, tiny_tasks, out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "on 2 local workers" in proc.stdout
    records = assert_complete(out, 8)
    share = max(1, records[0]["env"]["device"]["cpu_threads"])
    assert all(r["metrics"]["cpu_threads"] == [share] for r in records)
    from petlbench.engine.threads import physical_cores
    assert share == max(1, physical_cores() // 2)
    table = petlbench_cli("table", str(out))
    assert table.returncode == 0 and "linear" in table.stdout and "bitfit" in table.stdout

    again = run_cli(suite, tiny_tasks, out, "--workers", "2")  # everything done: skipped, nothing added
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 8
    assert_complete(out, 8)


def test_two_processes_on_one_folder_lose_and_duplicate_nothing(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    out = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--methods", "linear,bitfit", "--data-root", str(tiny_tasks), "--out",
            str(out), "--quiet", "--seeds", "0,1", "--no-weights"]
    procs = [subprocess.Popen([sys.executable, "-m", "petlbench.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    records = assert_complete(out, 8)
    assert len(list(out.rglob("*.json"))) == len(records)  # one file per run
    trained = sum(o[0].count("test top1") for o in outputs)
    assert trained == 8, outputs  # every run trained once: the other process waited for it, then skipped it


def test_sigkill_mid_run_leaves_no_record_and_the_next_run_completes_it(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=400)
    out = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--methods", "bitfit", "--data-root", str(tiny_tasks), "--out", str(out),
            "--quiet", "--no-weights"]
    proc = subprocess.Popen([sys.executable, "-m", "petlbench.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(lock_held(p) for p in out.rglob(".*.lock")):  # the run holds its lock while it trains
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    running = petlbench_cli("status", str(out), "--suite", str(suite), "--methods", "bitfit", "--data-root",
                            str(tiny_tasks), "--format", "json")
    assert json.loads(running.stdout)["rows"][0]["running"] == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(out.rglob("*.json"))  # no record, not even a failed one
    status = petlbench_cli("status", str(out), "--suite", str(suite), "--methods", "bitfit", "--data-root",
                           str(tiny_tasks), "--format", "json")
    (row,) = json.loads(status.stdout)["rows"]
    assert (row["missing"], row["running"], row["done"]) == (1, 0, 0)

    short = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=2)  # the same task, a short run
    again = petlbench_cli(*[a if a != str(suite) else str(short) for a in args])
    assert again.returncode == 0, again.stderr
    (record,) = load_records(out)
    assert record["status"] == "success"


def test_status_shows_done_failed_with_the_reason_and_missing(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    out = tmp_path / "results"
    ok = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--tasks", "count", "--data-root",
                       str(tiny_tasks), "--out", str(out), "--quiet", "--no-weights")
    assert ok.returncode == 0, ok.stderr
    (tiny_tasks / "position" / "test.txt").unlink()  # that task's final run fails, with a reason
    bad = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--tasks", "position", "--data-root",
                        str(tiny_tasks), "--out", str(out), "--quiet", "--no-weights")
    assert bad.returncode == 1
    status = petlbench_cli("status", str(out), "--suite", str(suite), "--methods", "linear,bitfit", "--data-root",
                           str(tiny_tasks))
    assert status.returncode == 0, status.stderr
    assert "1 done, 1 failed, 0 running, 2 missing" in status.stdout
    assert "test.txt" in status.stdout  # the failed run's error, its last line
    plain = petlbench_cli("status", str(out))
    assert plain.returncode == 0 and "1 done, 1 failed" in plain.stdout


class RuntimeOnly(Method):
    name = "runtime_only_method"
    families = ("vit",)

    def apply(self, model):
        return model


def test_methods_registered_at_run_time_are_refused_for_workers(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    petlbench.register_method(RuntimeOnly)
    try:
        with pytest.raises(UserError, match="registered at run time.*entry point"):
            petlbench.run(suite=str(suite), methods="runtime_only_method", data_root=str(tiny_tasks),
                          out=str(tmp_path / "r"), workers=2, progress=False, log=lambda line: None)
        assert not (tmp_path / "r" / "tiny").exists()
    finally:
        unregister_method("runtime_only_method")


def test_no_wait_is_for_slurm_only(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    assert_one_line_error(run_cli(suite, tiny_tasks, tmp_path / "r", "--no-wait"), "--no-wait", "slurm")


def test_slurm_options_profile_then_flags(tmp_path):
    config = tmp_path / "slurm.yaml"
    config.write_text("default: {partition: cpu, cpus: 2}\n"
                      "gpu: {partition: a100, gpus: 1, time_min: 240, mem_gb: 64, sbatch: {account: proj}}\n")
    options = slurm_options(str(config), "gpu", {"time_min": 30, "cpus": None})
    assert (options.partition, options.gpus, options.time_min, options.mem_gb, options.sbatch) == (
        "a100", 1, 30, 64.0, {"account": "proj"})
    assert slurm_options(str(config), None, {}).partition == "cpu"
    with pytest.raises(UserError, match="no profile 'h100'; profiles: default, gpu"):
        slurm_options(str(config), "h100", {})
    with pytest.raises(UserError, match="unknown option 'gpu_count'"):
        slurm_options(None, None, {"gpu_count": 1})
    with pytest.raises(UserError, match="'cpus' expects int >= 1"):
        slurm_options(None, None, {"cpus": 0})
    with pytest.raises(UserError, match="not found"):
        slurm_options(str(tmp_path / "missing.yaml"), None, {})
