"""Run files named from a method label: a label too long for a file name (a peft config path deep in a folder
tree) is shortened with a hash in file names and kept whole in the record; a folder where a run's lock or
record file goes is one line (fault 13)."""
from __future__ import annotations

import json
import shutil

from petlbench.plan import LABEL_CHARS, file_label
from petlbench.records import load_records
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite


def test_file_label_keeps_short_labels_and_hashes_long_ones():
    assert file_label("vpt_deep:tokens=10") == "vpt_deep:tokens=10".replace(":", "-")
    long_a, long_b = "peft:config=/" + "a" * 300 + "/x.yaml", "peft:config=/" + "a" * 300 + "/y.yaml"
    assert len(file_label(long_a)) == LABEL_CHARS and file_label(long_a) != file_label(long_b)
    assert file_label(long_a).startswith("peft-config=-aaa")


def test_a_long_label_runs_and_a_folder_at_a_run_file_is_one_line(tmp_path, tiny_tasks):
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    (deep / "lora.yaml").write_text("peft_type: LORA\nr: 2\n")
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out = tmp_path / "results"
    args = ("run", "--suite", str(suite), "--methods", f"peft:config={deep / 'lora.yaml'}", "--tasks", "count",
            "--data-root", str(tiny_tasks), "--out", str(out), "--quiet", "--no-weights")
    first = petlbench_cli(*args)
    assert first.returncode == 0, first.stderr
    (record,) = load_records(out)
    assert record["status"] == "success" and str(deep / "lora.yaml") in record["method"]["label"]
    (path,) = out.rglob("*.json")
    assert len(path.name) < 150 and len(record["method"]["label"]) > 240
    assert "done before, skipped" in petlbench_cli(*args).stdout

    (lock,) = out.rglob(".*.lock")
    lock.unlink()
    lock.mkdir()  # a folder where the lock goes
    assert_one_line_error(petlbench_cli(*args), str(lock), "a folder where the run's lock file goes")
    status = petlbench_cli("status", str(out))
    assert status.returncode == 0 and "1 done" in status.stdout, status.stderr
    lock.rmdir()

    saved = json.loads(path.read_text())
    path.unlink()
    path.mkdir()  # a folder where the record goes: found before training, nothing else written
    assert_one_line_error(petlbench_cli(*args), str(path), "a folder where the run's record file goes")
    assert [p.name for p in out.rglob("*.json")] == [path.name] and path.is_dir()
    shutil.rmtree(path)
    assert saved["status"] == "success"
