"""`petlbench report`: the page a browser shows, checked by rendering it in headless Chromium (Debian's package;
.ci/run installs it and sets PETLBENCH_REQUIRE_CHROMIUM=1, so CI fails rather than skips without it)."""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.data.demo import write_task
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite

SIZES = {"train800": 48, "val200": 16, "test": 40}


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("PETLBENCH_REQUIRE_CHROMIUM"):
            pytest.fail("PETLBENCH_REQUIRE_CHROMIUM is set but chromium is not on PATH (apt-get install chromium)")
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    return found


def browse(page: Path, *flags: str, tmp: Path) -> subprocess.CompletedProcess:
    """Headless Chromium on the file, offline: no network is reachable (and none may be needed)."""
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp / 'profile'}", *flags, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


class Shown(HTMLParser):
    """What the rendered DOM holds: table cells row by row, figures, collapsed blocks, every external reference."""

    def __init__(self):
        super().__init__()
        self.rows, self.svgs, self.details, self.external, self._cell = [], 0, [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "svg":
            self.svgs += 1
        elif tag == "summary":
            self.details.append("")
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self.details and self.lasttag == "summary":
            self.details[-1] += data


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    for seed, task in enumerate(("count", "shapes")):
        write_task(tmp / "data", task, seed=seed, sizes=SIZES)
    suite = write_tiny_suite(tmp / "tiny.yaml", {"count": 6, "shapes": 6}, epochs=2)
    run = petlbench_cli("run", "--suite", str(suite), "--methods", "linear,bitfit", "--data-root", str(tmp / "data"),
                        "--out", str(tmp / "results"), "--seeds", "0,1", "--quiet")
    assert run.returncode == 0, run.stderr
    return tmp / "results"


def test_the_page_shows_the_tables_numbers_both_figures_and_per_class_accuracy(results, tmp_path):
    page = tmp_path / "report.html"
    made = petlbench_cli("report", str(results), "-o", str(page))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(page)
    dom = browse(page, "--dump-dom", tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr
    shown = Shown()
    shown.feed(dom.stdout)
    table = list(csv.DictReader(io.StringIO(petlbench_cli("table", str(results), "--format", "csv").stdout)))
    by_method = {row[0].split(" ◆")[0]: row for row in shown.rows if row}
    header = next(row for row in shown.rows if row and row[0] == "method")
    for expected in table:  # every number of `table` is on the page, in the same column
        label = expected["method"]  # CSV marks the frontier in its own `pareto` column
        row = by_method[label]
        for column in ("count", "shapes", "mean", "params (M)"):
            assert row[header.index(column)] == expected[column], (label, column)
    assert shown.svgs >= 2, "the accuracy-vs-params plot and the rank plot, inline"
    assert sorted(shown.details) == ["count (8 rows)", "shapes (8 rows)"], "6 classes + mean of classes + top-1"
    assert shown.external == [], "self-contained: nothing fetched"
    assert "Flagged tasks" in dom.stdout and "Pareto frontier" in dom.stdout


def test_the_page_renders_to_a_picture_with_content(results, tmp_path):
    page = tmp_path / "report.html"
    assert petlbench_cli("report", str(results), "-o", str(page)).returncode == 0
    shot = tmp_path / "shot.png"
    done = browse(page, f"--screenshot={shot}", "--window-size=1200,1600", tmp=tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr
    pixels = np.asarray(Image.open(shot).convert("L"))
    ink = pixels < 128  # text, axes and points
    assert ink.mean() > 0.005, "the page is not blank"
    rows_with_ink = np.flatnonzero(ink.any(axis=1))
    assert rows_with_ink.max() - rows_with_ink.min() > 800, "tables and figures fill the page, not one line"


def test_report_refuses_a_folder_without_records_and_an_unwritable_target(tmp_path, results):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(petlbench_cli("report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")),
                          "no successful run records")
    assert not (tmp_path / "r.html").exists()
    (tmp_path / "folder.html").mkdir()
    assert_one_line_error(petlbench_cli("report", str(results), "-o", str(tmp_path / "folder.html")), "is a folder")
    assert (tmp_path / "folder.html").is_dir() and not any((tmp_path / "folder.html").iterdir())
