"""A result is what it says it is: run identity covers the data, failed means failed, records survive
shared folders and broken disks, tables skip what they cannot trust, and the test curve is never a choice."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import petlbench
from petlbench.errors import UserError
from petlbench.records import load_records
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite

FAST = {"epochs": 2, "warmup_epochs": 0, "batch_size": 16, "lr": 0.05}


def quiet_run(suite, root, out, methods="linear", **kwargs):
    lines = []
    records = petlbench.run(suite=str(suite), methods=methods, data_root=str(root), out=str(out), progress=False,
                            log=lines.append, **{"train": dict(FAST), **kwargs})
    return records, lines


def relabel(task_dir: Path, split: str, shift: int, classes: int) -> None:
    """New labels under the same image paths (a corrected or a different task: same file names)."""
    path = task_dir / f"{split}.txt"
    lines = [line.rsplit(" ", 1) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(f"{rel} {(int(label) + shift) % classes}\n" for rel, label in lines))


def test_changed_labels_train_again_and_keep_the_old_record(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    (first,), _ = quiet_run(suite, tiny_tasks, out)
    assert first["status"] == "success" and first["data_id"] and first["run_id"].endswith(first["data_id"][:8])
    old = {p: p.read_bytes() for p in out.rglob("*.json")}

    relabel(tiny_tasks / "count", "test", shift=1, classes=6)  # same paths, other labels
    (second,), lines = quiet_run(suite, tiny_tasks, out)
    assert not any("done before" in line for line in lines), lines
    assert any("the data changed since" in line for line in lines), lines
    assert second["status"] == "success" and second["config_id"] == first["config_id"]
    assert second["data_id"] != first["data_id"] and second["run_id"] != first["run_id"]
    assert all(p.read_bytes() == b for p, b in old.items()), "the old record is kept, byte for byte"
    assert len(load_records(out)) == 2

    table = petlbench.table(out)
    assert f"{100 * second['metrics']['test_top1']:.1f}" in table, "the table shows the newest record"
    (_, lines_again) = quiet_run(suite, tiny_tasks, out)
    assert any("done before, skipped" in line for line in lines_again), "unchanged data: skipped"


def test_changed_pixels_under_the_same_path_train_again(tmp_path, tiny_tasks):
    from PIL import Image
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    (first,), _ = quiet_run(suite, tiny_tasks, out)
    image = tiny_tasks / "count" / "images" / "train800val200" / "000000.jpg"
    if not image.exists():
        image = next((tiny_tasks / "count" / "images").rglob("*.jpg"))
    stat_before = image.stat()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(image)
    os.utime(image, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))  # even with the old mtime
    (second,), lines = quiet_run(suite, tiny_tasks, out)
    assert not any("done before" in line for line in lines)
    assert second["data_id"] != first["data_id"]


def test_diverging_loss_is_a_failure_and_the_sweep_goes_on(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    out = tmp_path / "results"
    records, lines = quiet_run(suite, tiny_tasks, out, methods="linear,bitfit",
                               train={**FAST, "optimizer": "sgd", "lr": 1e6, "lr_scale_batch": None})
    assert len(records) == 4 and all(r["status"] == "failed" for r in records), [r["error"] for r in records]
    assert all("diverged" in r["error"] or "loss became" in r["error"] for r in records)
    assert all("traceback" not in r for r in records), "a diverged run is a finding, not a crash"
    assert sum("FAILED" in line for line in lines) == 4, "each run was tried: the sweep went on"
    with pytest.raises(UserError, match="no successful run records"):
        petlbench.table(out)


def test_unwritable_out_is_found_before_training(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "results"):
        proc = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                             "--out", str(out), "--quiet")
        assert_one_line_error(proc, "--out", str(out), "cannot write records")
        assert "train" not in proc.stdout
    assert blocker.read_text() == "not a folder"


def test_records_honour_the_umask(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    old = os.umask(0o022)
    try:
        quiet_run(suite, tiny_tasks, tmp_path / "results")
    finally:
        os.umask(old)
    (record,) = (tmp_path / "results").rglob("*.json")
    assert stat.S_IMODE(record.stat().st_mode) == 0o644, oct(record.stat().st_mode)


def test_success_without_metrics_is_not_done(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    quiet_run(suite, tiny_tasks, out)
    (path,) = out.rglob("*.json")
    damaged = json.loads(path.read_text())
    del damaged["metrics"]
    path.write_text(json.dumps(damaged))
    (again,), lines = quiet_run(suite, tiny_tasks, out)
    assert not any("done before" in line for line in lines), "a success without its number is run again"
    assert again["status"] == "success" and "test_top1" in json.loads(path.read_text())["metrics"]


def test_table_skips_foreign_and_damaged_json_naming_them(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    quiet_run(suite, tiny_tasks, out)
    (out / "notes.json").write_text('{"hello": "world"}')
    (out / "tiny" / "half.json").write_text('{"schema": 2, "run_id": ')
    (out / "tiny" / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    proc = petlbench_cli("table", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| linear" in proc.stdout and "Traceback" not in proc.stderr
    for name in ("notes.json", "half.json", "latin1.json"):
        assert any(name in line and line.startswith("petlbench: warning:") for line in proc.stderr.splitlines()), name


def test_records_name_their_suite_file_absolutely(tmp_path, tiny_tasks):
    write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", "tiny.yaml", "--methods", "linear", "--data-root", str(tiny_tasks),
                         "--out", str(out), "--quiet", "--tasks", "position", "--train", "epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (record,) = load_records(out)
    assert record["suite_file"] == str((tmp_path / "tiny.yaml").resolve())
    elsewhere = petlbench_cli("table", str(out))  # from another folder: the suite's task order and groups
    assert "task order from the records" not in elsewhere.stdout, elsewhere.stdout


def test_plot_writes_only_inside_the_results_folder(tmp_path):
    from tests.test_plot import VTAB_TASKS, METHODS, write_runs
    results = write_runs(tmp_path / "results", "vtab1k", VTAB_TASKS, METHODS)
    for path in results.rglob("*.json"):  # a crafted record: its `suite` field is a path
        path.write_text(path.read_text().replace('"suite": "vtab1k"', '"suite": "../../escaped"'))
    paths = petlbench.plot(results)
    assert paths and all(p.parent == results for p in paths), paths
    assert not list(tmp_path.parent.glob("escaped*")) and not list(tmp_path.glob("escaped*"))


def test_progress_lines_reach_a_pipe_as_each_run_ends(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    proc = subprocess.Popen(
        [sys.executable, "-m", "petlbench.cli", "run", "--suite", str(suite), "--methods", "linear",
         "--data-root", str(tiny_tasks), "--out", str(tmp_path / "results"), "--train", "epochs=400"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": ""})
    try:
        first = proc.stdout.readline()
        assert "[1/2]" in first, first
        assert proc.poll() is None, "the first run's line arrived while the second still trains"
    finally:
        proc.kill()
        proc.wait()


def test_test_curve_is_recorded_and_shown_only_when_asked(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                         "--out", str(out), "--quiet", "--train", "epochs=4,warmup_epochs=0", "--eval-every", "2")
    assert proc.returncode == 0, proc.stderr
    (record,) = load_records(out)
    curve = record["metrics"]["test_curve"]
    assert [epoch for epoch, _ in curve] == [2, 4] and curve[-1][1] == record["metrics"]["test_top1"]
    last = petlbench.table(out)
    assert "last epoch" in last and "[max test]" not in last
    best = petlbench.table(out, report="max-test")
    assert "linear [max test]" in best and "SELECTED ON THE TEST SET" in best
    assert f"{100 * max(v for _, v in curve):.1f}" in best
    cli = petlbench_cli("table", str(out), "--report", "max-test")
    assert cli.returncode == 0 and "linear [max test]" in cli.stdout


def test_published_rows_carry_the_test_selection_mark(tmp_path):
    from tests.test_plot import write_runs
    tasks = [("cifar", "natural"), ("eurosat", "specialized"), ("dmlab", "structured")]
    results = write_runs(tmp_path / "results", "vtab1k", tasks, {"adapter": (70.0, 156_768), "linear": (60.0, 0)})
    text = petlbench.table(results)
    assert "published: adapter [noah (test_best, noah-jpeg, orig_in21k)] †" in text, "NOAH's: the best test epoch"
    linear = next(line for line in text.splitlines() if line.startswith("| published: linear ["))
    assert "[vpt (val_last, tfds-png, orig_in21k)]" in linear and "†" not in linear, "VPT's: tuned on val, no mark"
    assert "selected on the test set" in text


def test_bad_backbone_input_is_refused_before_any_run(tmp_path, tiny_tasks):
    """A wrong model name or a checkpoint that does not fit is bad input (exit 2), not N failed records."""
    from safetensors.torch import save_file
    from tests.conftest import TINY_ARGS
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                         "--out", str(out), "--backbone", "vit_tiny_patch16_22")
    assert_one_line_error(proc, "vit_tiny_patch16_22", "unknown to timm", "vit_tiny_patch16_224")
    import timm
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY_ARGS, "depth": 3})
    save_file(other.state_dict(), str(tmp_path / "deeper.safetensors"))
    proc = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tiny_tasks),
                         "--out", str(out), "--checkpoint", str(tmp_path / "deeper.safetensors"))
    assert_one_line_error(proc, "deeper.safetensors", "does not fit")
    assert not list(out.rglob("*.json")), "no failed records for bad input"


def test_a_bad_grid_is_refused_before_data_or_training(tmp_path):
    proc = petlbench_cli("run", "--suite", "vtab", "--methods", "vpt_deep", "--protocol", "tune",
                         "--data-root", str(tmp_path / "nowhere"), "--grid", "{lr: [1e-3, 0], tokens: [10]}")
    assert_one_line_error(proc, "--grid", "'lr'", "0")
    proc = petlbench_cli("run", "--suite", "vtab", "--methods", "vpt_deep", "--protocol", "tune",
                         "--data-root", str(tmp_path / "nowhere"), "--grid", "{tokens: [0]}")
    assert_one_line_error(proc, "--grid", "'tokens'", "in [1, 1000]")
