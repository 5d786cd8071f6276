"""End to end through the real CLI: the demo suite, skipping finished runs, retries, killed runs."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from petlbench.records import load_records
from tests.conftest import petlbench_cli, write_tiny_suite

REQUIRED = {"schema", "run_id", "status", "error", "suite", "task", "seed", "method", "backbone", "protocol",
            "train", "data", "metrics", "params", "wall_time_s", "peak_memory", "env"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_root):
    """The README's demo command, once: `petlbench run --methods vpt_deep,linear --suite demo`."""
    root = tmp_path_factory.mktemp("demo")
    result = petlbench_cli("run", "--methods", "vpt_deep,linear", "--suite", "demo", "--data-root",
                           str(demo_root), "--out", str(root / "results"), "--quiet")
    return root, result


def test_demo_writes_records_and_table(demo_run):
    root, result = demo_run
    assert result.returncode == 0, result.stderr
    records = load_records(root / "results")
    assert len(records) == 6 and all(r["status"] == "success" for r in records)
    assert {(r["task"], r["method"]["name"]) for r in records} == {
        (t, m) for t in ("shapes", "count", "position") for m in ("vpt_deep", "linear")}
    for r in records:
        assert REQUIRED <= set(r)
        assert r["protocol"]["train_splits"] == ["train800val200"] and r["protocol"]["eval_splits"] == ["test"]
        assert r["protocol"]["name"] == "final" and r["recipe"]["name"] == "vpt"
        assert r["data"]["train_images"] == 1000 and r["data"]["preprocessing"]["input_size"] == [3, 32, 32]
        assert r["backbone"]["checkpoint_sha256"] and r["backbone"]["weights"].startswith("checkpoint sha256:")
        assert r["env"]["torch"] and r["env"]["timm"] and r["env"]["device"]["type"] in ("cpu", "cuda")
        assert 0.0 <= r["metrics"]["test_top1"] <= 1.0
    linear = [r for r in records if r["method"]["name"] == "linear"]
    assert all(r["params"]["trainable_excl_head"] == 0 for r in linear)
    # the pre-trained demo backbone transfers: far above chance (1/6) on the shape task
    shapes = next(r for r in linear if r["task"] == "shapes")
    assert shapes["metrics"]["test_top1"] > 0.5
    assert "| vpt_deep:tokens=4" in result.stdout and "| linear" in result.stdout
    assert "records:" in result.stdout


def test_second_run_skips_finished_runs(demo_run, demo_root):
    root, _ = demo_run
    before = {p: p.read_bytes() for p in (root / "results").rglob("*.json")}
    again = petlbench_cli("run", "--methods", "vpt_deep,linear", "--suite", "demo", "--data-root",
                          str(demo_root), "--out", str(root / "results"), "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done before, skipped") == 6
    assert {p: p.read_bytes() for p in (root / "results").rglob("*.json")} == before


def test_table_command_formats(demo_run):
    root, _ = demo_run
    md = petlbench_cli("table", str(root / "results"))
    assert md.returncode == 0 and "| method" in md.stdout and "params (M)" in md.stdout
    csv = petlbench_cli("table", str(root / "results"), "--format", "csv")
    header = csv.stdout.splitlines()[0].split(",")
    assert header[:4] == ["method", "shapes", "count", "position"] and any(h.startswith("mean") for h in header)
    latex = petlbench_cli("table", str(root / "results"), "--format", "latex")
    assert "\\toprule" in latex.stdout


def test_failed_run_is_recorded_then_retried(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "missing_task": 6})
    out = tmp_path / "results"
    first = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                          "--out", str(out), "--quiet")
    assert first.returncode == 1
    assert "missing_task: task folder not found" in first.stdout
    failed = [r for r in load_records(out) if r["status"] == "failed"]
    assert len(failed) == 1 and "task folder not found" in failed[0]["error"]
    done = {p: p.read_bytes() for p in out.rglob("*.json") if json.loads(p.read_text())["status"] == "success"}

    from petlbench.data.demo import write_task
    write_task(tiny_tasks, "missing_task", seed=7, sizes={"train800": 24, "val200": 8, "test": 16}, kind="count")
    second = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                           "--out", str(out), "--quiet")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("done before, skipped") == 1
    records = load_records(out)
    assert len(records) == 2 and all(r["status"] == "success" for r in records)
    assert all(p.read_bytes() == b for p, b in done.items()), "finished records are never rewritten"


def test_killed_run_leaves_no_partial_record(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    out = tmp_path / "results"
    base = [sys.executable, "-m", "petlbench.cli", "run", "--suite", str(suite), "--methods", "linear",
            "--data-root", str(tiny_tasks), "--out", str(out), "--quiet"]
    assert subprocess.run(base + ["--tasks", "count"], capture_output=True).returncode == 0
    def files():  # a run's empty lock file (.<run>.lock) stays; it holds nothing and is free once its holder died
        return [f for f in out.rglob("*") if f.is_file() and not (f.name.endswith(".lock") and not f.stat().st_size)]

    finished = {p: p.read_bytes() for p in files()}  # the record, its task weights and its per-sample outputs
    assert sorted(p.suffix for p in finished) == [".json", ".npz", ".safetensors"]

    proc = subprocess.Popen(base + ["--tasks", "position", "--train", "epochs=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(8)  # import, build, decode, then deep inside the training loop
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = files()
    assert not [f for f in left if f.name.endswith(".tmp")], "no temp file left behind"
    assert {f: f.read_bytes() for f in left} == finished, "no record of the killed run; the finished one intact"
    records = load_records(out)
    assert len(records) == 1 and records[0]["status"] == "success" and records[0]["task"] == "count"


def test_backbone_overrides_are_recorded(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out = tmp_path / "results"
    result = petlbench_cli("run", "--suite", str(suite), "--methods", "vpt_shallow:tokens=3", "--data-root",
                           str(tiny_tasks), "--out", str(out), "--quiet", "--backbone-args", "depth=1,img_size=24",
                           "--mean", "0.1,0.2,0.3", "--std", "0.4,0.5,0.6", "--train", "batch_size=7,lr=0.05")
    assert result.returncode == 0, result.stderr
    (r,) = load_records(out)
    assert r["backbone"]["args"]["depth"] == 1 and r["backbone"]["args"]["embed_dim"] == 48
    prep = r["data"]["preprocessing"]
    assert prep["mean"] == [0.1, 0.2, 0.3] and prep["std"] == [0.4, 0.5, 0.6] and prep["input_size"] == [3, 24, 24]
    assert r["train"]["batch_size"] == 7 and r["train"]["lr"] == 0.05 and r["train"]["optimizer"] == "sgd"
    assert r["params"]["added"] == 3 * 48 and r["params"]["backbone"] < 48 * 48 * 12 * 2
    assert r["method"]["options"] == {"tokens": 3, "dropout": 0.0, "init": "xavier"}


def test_missing_checkpoint_is_one_line(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    result = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                           "--out", str(tmp_path / "results"), "--checkpoint", str(tmp_path / "nope.safetensors"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"petlbench: error: --checkpoint: {tmp_path / 'nope.safetensors'}: file not found"
    assert not (tmp_path / "results").exists()


def test_missing_data_root_or_seeds_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    for args, needle in ((["--data-root", str(tmp_path / "nope")], "folder not found"),
                         (["--data-root", str(tmp_path), "--seeds", ","], "--seeds")):
        result = petlbench_cli("run", "--suite", "vtab1k", "--methods", "linear", "--random-init", "--out", str(out),
                               *args)
        assert result.returncode == 2 and needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_demo_checkpoint_follows_the_umask(demo_root):
    from petlbench.records import current_umask
    from petlbench.suite import load_suite
    checkpoint = demo_root / load_suite("demo").backbone["checkpoint"]
    assert checkpoint.stat().st_mode & 0o777 == 0o666 & ~current_umask()
