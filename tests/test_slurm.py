"""`--executor slurm` on a real Slurm cluster (CI starts one with .ci/slurm-up.sh): a tune sweep end to end,
a re-run that submits nothing, a cancelled job that shows as not done and is launched by the next run, a job
size no node holds refused before submitting, jobs that cannot start (a drained node) reported, not waited on.
The Slurm config file's refusals and the parsing of sinfo's GPUs need no cluster.

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

from petlbench.errors import UserError
from petlbench.records import load_records
from petlbench.sweep.cluster import JobSize, gpu_count, job_list
from petlbench.sweep.runner import make_sweep
from petlbench.sweep.slurm import SlurmExecutor, SlurmOptions, slurm_options
from petlbench.sweep.status import sweep_status
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
    refused = sweep(suite, tiny_tasks, tmp_path / "results", "--sbatch", "constraint=no_such_feature")
    assert_one_line_error(refused, "--executor slurm", "sbatch refused", "feature")


def nodes() -> list[dict]:
    """The cluster's nodes as sinfo lists them (read here, not through petlbench)."""
    said = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P"], capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in said.stdout.splitlines() if line.strip()]
    return [{"name": n, "cpus": int(c), "mem_mb": int(m), "gpus": gpu_count(g), "partition": p.rstrip("*"),
             "default": p.endswith("*")} for n, c, m, g, p in rows]


def test_the_default_job_size_is_refused_before_submitting_naming_the_largest_node(cluster, tmp_path, tiny_tasks):
    default = [n for n in nodes() if n["default"]]
    if any(n["cpus"] >= 4 and n["mem_mb"] >= 16 * 1024 for n in default):
        pytest.skip("a node of this cluster holds the default job (4 CPUs, 16 GB)")
    largest = max(default, key=lambda n: (n["cpus"], n["mem_mb"]))
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    refused = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                            "--out", str(out), "--quiet", "--executor", "slurm")  # no --cpus/--mem-gb
    assert_one_line_error(refused, "a job asks 4 CPUs and 16 GB", f"partition {largest['partition']}",
                          f"has {largest['cpus']} CPUs", f"(node {largest['name']})", "--cpus")
    assert not (out / ".slurm").exists()  # nothing was submitted


def test_gpus_no_node_has_and_an_unknown_partition_are_refused_and_a_fitting_job_is_not(cluster):
    node = max(nodes(), key=lambda n: n["gpus"])
    with pytest.raises(UserError, match=rf"asks 1 CPU, 1 GB and {node['gpus'] + 1} GPUs; .* and {node['gpus']} "
                                        rf"GPUs? \(node {node['name']}\); pass a smaller --gpus or"):
        SlurmExecutor(SlurmOptions(cpus=1, mem_gb=1, gpus=node["gpus"] + 1, partition=node["partition"]))
    with pytest.raises(UserError, match=r"no partition 'no_such_partition' on this cluster \(partitions: .*"
                                        + node["partition"]):
        SlurmExecutor(SlurmOptions(cpus=1, mem_gb=1, partition="no_such_partition"))
    fits = SlurmExecutor(SlurmOptions(cpus=1, mem_gb=1, gpus=node["gpus"], partition=node["partition"]))
    assert fits.partition == node["partition"]
    default = next(n["partition"] for n in nodes() if n["default"])
    assert SlurmExecutor(SlurmOptions(cpus=1, mem_gb=1)).partition == default


@pytest.fixture
def drained(cluster):
    """Every node of the default partition drained (jobs pend: ReqNodeNotAvail / Resources), resumed after."""
    names = sorted({n["name"] for n in nodes() if n["default"]})
    subprocess.run(["scontrol", "update", f"NodeName={','.join(names)}", "State=DRAIN", "Reason=petlbench-test"],
                   check=True, timeout=30)
    try:
        yield names
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={','.join(names)}", "State=RESUME"], check=True, timeout=30)
        deadline = time.monotonic() + 30
        while subprocess.run(["sinfo", "-h", "-n", ",".join(names), "-o", "%T"], capture_output=True,
                             text=True).stdout.split() != ["idle"] * len(names) and time.monotonic() < deadline:
            time.sleep(0.5)  # back in service (and responding) before the next test submits


def test_jobs_that_cannot_start_are_reported_cancelled_and_left_not_done(drained, tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    started = time.monotonic()
    stuck = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                          "--out", str(out), "--quiet", "--no-weights", "--seeds", "0,1", *SLURM_FLAGS, timeout=120)
    assert time.monotonic() - started < 60  # it did not wait on them
    array = re.search(r"as array (\d+)", stuck.stdout).group(1)
    line = assert_one_line_error(stuck, f"jobs {array}_", "cannot start", f"{drained[0]} is drained",
                                 "cancelled them", "2 run(s) have no record")
    assert re.search(r"pending for (ReqNodeNotAvail|Resources|Nodes required)", line), line
    assert not subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip()
    assert not load_records(out)
    rows, _ = sweep_status(make_sweep(str(suite), "linear", [0, 1], data_root=str(tiny_tasks), out=out))
    assert sum(r["missing"] for r in rows) == 2 and sum(r["done"] for r in rows) == 0


@pytest.fixture
def short_partition(cluster):
    """A partition of every node whose time limit (1 min) is below the jobs' 5 min: they pend for a partition limit."""
    name = "petlbench_test_short"
    subprocess.run(["scontrol", "create", f"PartitionName={name}", "Nodes=ALL", "MaxTime=1", "State=UP"], check=True,
                   timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["scancel", "-p", name], timeout=30)
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], check=True, timeout=30)


def test_a_job_over_the_partition_time_limit_is_reported_with_squeues_reason(short_partition, tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    stuck = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                          "--out", str(tmp_path / "results"), "--quiet", "--no-weights", *SLURM_FLAGS,
                          "--partition", short_partition, timeout=120)
    array = re.search(r"as array (\d+)", stuck.stdout).group(1)
    line = assert_one_line_error(stuck, f"jobs {array}", "cannot start", "cancelled them", "1 run(s) have no record")
    assert re.search(r"cannot start, pending for Partition(TimeLimit|Config);", line), line  # squeue's own code
    assert not subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip()


def test_a_slurm_config_that_is_not_utf8_names_the_file(tmp_path):
    config = tmp_path / "slurm.yaml"
    config.write_bytes("default: {partition: gpu, sbatch: {account: 'M\u00fcller'}}\n".encode("latin-1"))
    with pytest.raises(UserError, match=re.escape(f"{config}: not UTF-8 text (byte 0xfc at offset 46)")):
        slurm_options(str(config), None, {})


@pytest.mark.parametrize("text, expected", [
    ("- cpu\n- gpu\n", "expected a mapping of profile names to Slurm options"),
    ("cpus: 8\nmem_gb: 32\n", "top-level key 'cpus' is a Slurm option, but top-level keys name profiles"),
    ("default: [8, 32]\n", "profile 'default': expected a mapping of options"),
    ("default: 8\n", "profile 'default': expected a mapping of options"),
    ("gpu: {gpus: 1}\n", "no profile 'default'; profiles: gpu (pass --slurm-profile NAME"),
    ("default: {cpus: 2, gpu_count: 1}\n", "unknown option 'gpu_count'"),
])
def test_a_slurm_config_of_the_wrong_shape_names_the_file(tmp_path, text, expected):
    config = tmp_path / "slurm.yaml"
    config.write_text(text)
    with pytest.raises(UserError, match=re.escape(f"{config}: ") + ".*" + re.escape(expected)):
        slurm_options(str(config), None, {})


def test_gpus_of_sinfo_gres_and_job_ids_in_slurm_notation():
    assert [gpu_count(g) for g in ("(null)", "gpu:2", "gpu:a100:4(S:0-1)", "gpu:a100:2(S:0,1),gpu:v100:2",
                                   "shard:gpu:8", "gpu:1g.5gb:7,mps:100")] == [0, 2, 4, 4, 0, 7]
    assert job_list(["12_0", "12_1", "12_3", "12_4", "12_5", "13"]) == "13, 12_[0-1,3-5]"
    assert JobSize(4, 16).mem_mb == 16384 and JobSize(1, 1.5).mem_mb == 1536  # as submitit writes --mem
    assert JobSize(4, 16).describe() == "4 CPUs and 16 GB"
    assert JobSize(1, 0.5, 1).describe() == "1 CPU, 0.5 GB and 1 GPU"
