"""What a finished run leaves behind survives what goes wrong around it: the table shows the record the last
`run` used (data switched away and back), a disk that fills while the weights are written loses only the
weights (said in the record), and an --out that breaks mid-run keeps the record elsewhere, said and non-zero."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from petlbench.data.demo import write_task
from petlbench.records import current, load_records
from petlbench.report.tables import render
from petlbench.sweep.runner import run
from tests.conftest import write_tiny_suite

SIZES = {"train800": 48, "val200": 16, "test": 30}


def run_linear(suite: Path, data: Path, out: Path, lines: list[str]) -> dict:
    records = run(str(suite), "linear", data_root=str(data), out=out, progress=False, log=lines.append)
    assert len(records) == 1 and records[0]["status"] == "success", records
    return records[0]


def table_cell(out: Path) -> str:
    header, row = render(out, "csv").splitlines()[:2]
    return dict(zip(header.split(","), row.split(",")))["count"]


def test_table_shows_the_data_the_last_run_used(tmp_path):
    """Data A, then B, then A again (done before, skipped): the table shows A's run, not B's, newer on disk."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_task(a, "count", seed=0, sizes=SIZES)
    write_task(b, "count", seed=5, sizes=SIZES)  # other images and labels under the same file names
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=2)
    out, lines = tmp_path / "results", []
    on_a = run_linear(suite, a, out, lines)
    on_b = run_linear(suite, b, out, lines)
    assert on_a["data_id"] != on_b["data_id"]
    assert round(100 * on_a["metrics"]["test_top1"], 1) != round(100 * on_b["metrics"]["test_top1"], 1), \
        "the two data must give different numbers for this test to see which one the table shows"
    assert table_cell(out) == f"{100 * on_b['metrics']['test_top1']:.1f}"
    again = run_linear(suite, a, out, lines)
    assert "done before, skipped" in lines[-1] and again["run_id"] == on_a["run_id"]
    assert table_cell(out) == f"{100 * on_a['metrics']['test_top1']:.1f}"
    shown = current(load_records(out))
    assert [r["run_id"] for r in shown] == [on_a["run_id"]] and shown[0]["confirmed_at"] > on_b["finished_at"]
    assert len(load_records(out)) == 2, "B's record is kept"

    labels = a / "count" / "test.txt"  # edit A's labels, run, revert them, run: the reverted data's run shows
    original = labels.read_text()
    edited = [f"{line.split()[0]} {(int(line.split()[1]) + 1) % 6}" for line in original.splitlines()]
    labels.write_text("\n".join(edited) + "\n")
    run_linear(suite, a, out, lines)
    labels.write_text(original)
    assert run_linear(suite, a, out, lines)["run_id"] == on_a["run_id"]
    assert [r["run_id"] for r in current(load_records(out))] == [on_a["run_id"]]
    assert table_cell(out) == f"{100 * on_a['metrics']['test_top1']:.1f}"


def cli(args: list[str], cwd: Path, env: dict | None = None, file_size_limit: int | None = None, **popen):
    """The real CLI in a subprocess; `file_size_limit`: RLIMIT_FSIZE, a real write that fails like a full disk."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    return subprocess.Popen([sys.executable, "-m", "petlbench.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                            preexec_fn=limit if file_size_limit else None, **popen)


def test_weights_lost_to_a_full_disk_keep_the_record_and_the_sweep_goes_on(tmp_path):
    """`full` writes ~3.6 MB of task weights into a 2 MB file-size limit: safetensors' own error, not OSError."""
    write_task(tmp_path / "data", "count", seed=0, sizes=SIZES)
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--methods", "full,linear", "--data-root", str(tmp_path / "data"),
            "--out", str(out), "--backbone-args", "embed_dim=192", "--quiet"]
    proc = cli(args, tmp_path, file_size_limit=2 << 20)
    stdout, stderr = proc.communicate(timeout=300)
    assert "Traceback" not in stdout + stderr, stderr
    assert proc.returncode == 1, (stdout, stderr)
    assert "1 run(s) lost their task weights" in stderr
    records = {r["method"]["name"]: r for r in load_records(out)}
    assert records["full"]["status"] == "success" and "File too large" in records["full"]["weights"]["lost"]
    assert records["linear"]["weights"]["sha256"], "the sweep went on to the next run"
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("full__*.safetensors"))

    again = cli(args, tmp_path)  # no limit now: the run without weights trains again, the other is done
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "task weights lost when the run saved them" in stdout and "training again" in stdout
    assert stdout.count("done before, skipped") == 1
    full = [p for p in (out / "tiny" / "count").glob("full__*.json")]
    assert len(full) == 1 and json.loads(full[0].read_text())["weights"]["sha256"]
    kept = list((out / "tiny" / "count" / "replaced").glob("full__*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["weights"]["lost"], "the old record is kept"


def test_out_broken_mid_run_rescues_the_record_says_where_and_fails(tmp_path):
    write_task(tmp_path / "data", "count", seed=0, sizes=SIZES)
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=5)
    out, temp = tmp_path / "results", tmp_path / "tmp"
    temp.mkdir()
    proc = cli(["run", "--suite", str(suite), "--methods", "bitfit", "--data-root", str(tmp_path / "data"),
                "--out", str(out), "--quiet"], tmp_path, env={"TMPDIR": str(temp)})
    task_dir = out / "tiny" / "count"
    deadline = time.monotonic() + 120
    while not list(task_dir.glob(".*.lock")):  # the run holds its lock: it is training now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    task_dir.rename(out / "tiny" / "moved")  # the task folder gone, a file in its place: nothing can be written
    task_dir.write_text("in the way\n")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, (stdout, stderr)
    rescued = list((temp / "petlbench-unsaved").rglob("*.json"))
    assert len(rescued) == 1 and json.loads(rescued[0].read_text())["status"] == "success"
    assert f"the record is at {rescued[0]}" in stderr and "Traceback" not in stderr
    assert f"records: {out}/tiny/" not in stdout, "the summary does not send the user to the broken folder"
