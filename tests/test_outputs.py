"""Unwritable output paths of `plot` and `data show` (a file where a folder should be, a folder where the file
should be, a read-only folder): one line naming the path, exit 2, no traceback, nothing half written (fault 10).
`export` has the same checks, tested in test_deploy.py beside its trained runs."""
from __future__ import annotations

import os
import subprocess

import pytest

from petlbench.cli import main
from tests.conftest import assert_one_line_error
from tests.test_plot import METHODS, VTAB_TASKS, write_runs

def petlbench_cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (these commands start no runs): quicker than a subprocess, the same output."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")


def test_plot_under_a_file_is_one_line(tmp_path):
    results = write_runs(tmp_path / "results", "vtab1k", VTAB_TASKS, METHODS)
    (tmp_path / "blocker").write_text("a file, not a folder")
    proc = petlbench_cli("plot", str(results), "--out", str(tmp_path / "blocker" / "fig"))
    assert_one_line_error(proc, "--out", str(tmp_path / "blocker"), "cannot write plots")


def test_plot_onto_a_folder_is_one_line_and_keeps_what_was_there(tmp_path):
    results = write_runs(tmp_path / "results", "vtab1k", VTAB_TASKS, METHODS)
    (tmp_path / "fig.svg").mkdir()
    (tmp_path / "fig.svg" / "keep.txt").write_text("mine")
    proc = petlbench_cli("plot", str(results), "--out", str(tmp_path / "fig"))
    assert_one_line_error(proc, str(tmp_path / "fig.svg"), "is a folder")
    assert (tmp_path / "fig.svg" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "no temporary file left behind"


@as_root
def test_plot_into_a_read_only_folder_is_one_line(tmp_path):
    results = write_runs(tmp_path / "results", "vtab1k", VTAB_TASKS, METHODS)
    (tmp_path / "ro").mkdir(mode=0o555)
    assert_one_line_error(petlbench_cli("plot", str(results), "--out", str(tmp_path / "ro" / "fig")),
                          str(tmp_path / "ro"), "cannot write")


def test_data_show_into_a_file_is_one_line(tmp_path, tiny_tasks):
    (tmp_path / "shown").write_text("a file, not a folder")
    proc = petlbench_cli("data", "show", "--suite", "demo", "--data-root", str(tiny_tasks), "--tasks", "count",
                         "--out", str(tmp_path / "shown" / "sub"))
    assert_one_line_error(proc, "--out", str(tmp_path / "shown" / "sub"), "cannot write pictures")
    assert (tmp_path / "shown").read_text() == "a file, not a folder"


def test_data_show_onto_a_folder_in_place_of_the_png_is_one_line(tmp_path, tiny_tasks):
    (tmp_path / "shown" / "demo_count.png").mkdir(parents=True)
    proc = petlbench_cli("data", "show", "--suite", "demo", "--data-root", str(tiny_tasks), "--tasks", "count",
                         "--out", str(tmp_path / "shown"))
    assert_one_line_error(proc, str(tmp_path / "shown" / "demo_count.png"), "is a folder")


@as_root
def test_data_show_into_a_read_only_folder_is_one_line(tmp_path, tiny_tasks):
    (tmp_path / "ro").mkdir(mode=0o555)
    proc = petlbench_cli("data", "show", "--suite", "demo", "--data-root", str(tiny_tasks), "--out",
                         str(tmp_path / "ro"))
    assert_one_line_error(proc, str(tmp_path / "ro"), "cannot write pictures")
