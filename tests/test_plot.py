"""`petlbench plot`: accuracy vs trainable parameters, PNG and SVG, published points when the backbone matches."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from pathlib import Path

import pandas as pd
import pytest

from conftest import assert_one_line_error, petlbench_cli
from petlbench.errors import UserError
from petlbench.report.plots import plot
from petlbench.records import SCHEMA, write_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"


def write_runs(folder, suite, tasks, methods, backbone="vit_base_patch16_224.augreg_in21k", weights="timm-pretrained"):
    """Successful records for (task, group) x {label: (top-1 %, trainable params)}."""
    for index, (task, group) in enumerate(tasks):
        for label, (top1, params) in methods.items():
            write_atomic(folder / suite / f"{task}-{label}.json", {
                "schema": SCHEMA, "run_id": f"{task}-{label}", "status": "success", "suite": suite, "task": task,
                "task_index": index, "task_group": group, "seed": 0, "method": {"name": label, "label": label},
                "backbone": {"name": backbone, "weights": weights}, "protocol": {"name": "final"},
                "metrics": {"test_top1": top1 / 100}, "params": {"trainable_excl_head": params, "backbone": 85_798_656}})
    return folder


VTAB_TASKS = [("cifar", "natural"), ("eurosat", "specialized"), ("dmlab", "structured")]
METHODS = {"linear": (60.0, 0), "vpt_deep": (70.0, 460_000)}


def svg_ids_and_texts(path):
    root = ET.parse(path).getroot()  # raises if not well-formed XML
    assert root.tag == f"{SVG}svg"
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    texts = " ".join("".join(e.itertext()) for e in root.iter(f"{SVG}text"))
    return ids, texts


def test_plot_writes_png_and_svg_with_published_points(tmp_path):
    results = write_runs(tmp_path / "results", "vtab1k", VTAB_TASKS, METHODS)
    paths = plot(results)
    assert paths == [results / "vtab1k_accuracy_vs_params.png", results / "vtab1k_accuracy_vs_params.svg"]
    png = paths[0].read_bytes()
    assert len(png) > 1000 and png.startswith(PNG_SIGNATURE)
    ids, texts = svg_ids_and_texts(paths[1])
    assert {"your-points", "published-points"} <= ids, "published markers beside yours"
    group = next(e for e in ET.parse(paths[1]).getroot().iter() if e.get("id") == "published-points")
    markers = [e.get("style") for e in group.iter(f"{SVG}use")]
    methods = pd.read_csv(Path(__file__).parents[1] / "results/published/published_vtab1k.csv")["method"].nunique()
    assert len(markers) == methods == 27, "every published method, at its closest row (each gives params)"
    assert all("fill-opacity: 0" in m for m in markers), "hollow"
    # the legend names every weights the points came from (GPS's rows: augreg, the weights its code loads)
    assert "published (vit_base_patch16_224.orig_in21k, vit_base_patch16_224.augreg_in21k)" in texts
    assert "published: range across sources" in texts
    assert "ssf" in texts, "every published method is a point, not only the ones you ran"
    assert "vpt_deep *" in texts, "3 of 19 tasks: the point is marked"
    assert "0 drawn at 0.001" in texts, "linear's zero params sit at a floor the axis label names"
    assert "mean (groups)" in texts, "VTAB-1k's headline is the mean of group means"


def test_plot_cli_without_matching_backbone_and_own_stem(tmp_path):
    results = write_runs(tmp_path / "results", "fgvc", [("CUB", "fgvc"), ("nabirds", "fgvc")], METHODS,
                         weights="random-init")
    stem = tmp_path / "figures" / "fgvc"
    proc = petlbench_cli("plot", str(results), "--out", str(stem))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(stem) + ".png", str(stem) + ".svg"]
    assert (tmp_path / "figures" / "fgvc.png").read_bytes().startswith(PNG_SIGNATURE)
    ids, texts = svg_ids_and_texts(tmp_path / "figures" / "fgvc.svg")
    assert "your-points" in ids and "published-points" not in ids, "random weights: no published points"
    assert "test top-1 (%), mean" in texts
    forced = plot(results, out=tmp_path / "forced", published="always")
    assert "published-points" in svg_ids_and_texts(forced[1])[0]


def test_plot_bad_input(tmp_path):
    assert_one_line_error(petlbench_cli("plot", str(tmp_path / "nope")), "no such results folder")
    write_runs(tmp_path / "r", "vtab1k", VTAB_TASKS, METHODS)
    write_runs(tmp_path / "r", "fgvc", [("CUB", "fgvc")], METHODS)
    with pytest.raises(UserError, match="several suites .*pick one with --suite"):
        plot(tmp_path / "r", out=tmp_path / "one")
    assert_one_line_error(petlbench_cli("plot", str(tmp_path / "r"), "--published", "maybe"), "--published")
    assert len(plot(tmp_path / "r")) == 4, "one figure per suite by default"
