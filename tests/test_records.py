"""A damaged record (a key missing, a wrong type) is found once, when it is read: folder readers (table, plot,
status) skip it with a warning naming the file, eval / predict / export refuse it in one line (fault 11)."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess

import pytest

from petlbench.cli import main
from petlbench.records import parse_record
from tests.conftest import assert_one_line_error
from tests.test_plot import METHODS, VTAB_TASKS, write_runs

DAMAGE = {
    "protocol_a_string": (lambda r: r.update(protocol="final"), "protocol"),
    "no_metrics": (lambda r: r.pop("metrics"), "metrics"),
    "method_a_string": (lambda r: r.update(method="linear"), "method"),
    "curve_of_strings": (lambda r: r["metrics"].update(test_curve=[["1", "0.5"], ["2", "x"]]), "metrics.test_curve"),
    "seed_a_string": (lambda r: r.update(seed="0"), "seed"),
    "top1_a_string": (lambda r: r["metrics"].update(test_top1="70%"), "metrics.test_top1"),
    "params_not_numbers": (lambda r: r["params"].update(trainable_excl_head="460k"), "params.trainable_excl_head"),
}


def in_process(*args: str) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def damaged_folder(tmp_path):
    """Good records of two methods, then one damaged copy per kind of damage beside them."""
    results = write_runs(tmp_path / "results", "vtab1k", VTAB_TASKS, METHODS)
    good = json.loads((results / "vtab1k" / "cifar-linear.json").read_text())
    for name, (damage, _) in DAMAGE.items():
        record = json.loads(json.dumps(good))
        record["run_id"] = record["config_id"] = name
        damage(record)
        (results / "vtab1k" / f"{name}.json").write_text(json.dumps(record))
    return results


@pytest.mark.parametrize("name", DAMAGE)
def test_parse_record_names_the_damaged_key(tmp_path, name):
    results = damaged_folder(tmp_path)
    with pytest.raises(ValueError, match=f"damaged run record: the key {DAMAGE[name][1]} "):
        parse_record(results / "vtab1k" / f"{name}.json")
    assert parse_record(results / "vtab1k" / "cifar-linear.json")["status"] == "success"


@pytest.mark.parametrize("command", [("table",), ("plot",), ("status",)])
def test_folder_readers_skip_damaged_records_naming_each(tmp_path, command):
    results = damaged_folder(tmp_path)
    proc = in_process(*command, str(results))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("petlbench: warning:")]
    for name in DAMAGE:
        assert any(f"{name}.json: skipped" in line for line in warnings), (name, proc.stderr)
    if command == ("table",):
        assert "| linear" in proc.stdout and "| vpt_deep" in proc.stdout, "the good records are still tabulated"
    if command == ("status",):
        assert "6 done, 0 failed" in proc.stdout


@pytest.mark.parametrize("command", [("eval",), ("predict", "some.jpg"), ("export", "out.safetensors", "--merged")])
def test_eval_predict_export_refuse_a_damaged_record_in_one_line(tmp_path, command):
    results = damaged_folder(tmp_path)
    for name, (_, key) in DAMAGE.items():
        path = results / "vtab1k" / f"{name}.json"
        args = [command[0], str(path), *command[1:]]
        if command[0] == "export":
            args[2] = str(tmp_path / args[2])
        assert_one_line_error(in_process(*args), str(path), key)


def test_a_record_lacking_what_a_rebuild_needs_is_one_line(tmp_path):
    results = damaged_folder(tmp_path)
    path = results / "vtab1k" / "cifar-linear.json"  # a table's record: no suite file, training settings, ...
    assert_one_line_error(in_process("eval", str(path)), str(path), "suite_file is missing")
