"""ELEVATER's multi-label VOC 2007 (issue 16): the toolkit's index files read into multi-hot labels, binary
cross-entropy training, the 11-point mAP (hand-worked cases) recorded as metrics.test_map11 and shown by the table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petlbench.data.domains import read_split
from petlbench.engine.multilabel import average_precision, hits, mean_average_precision
from petlbench.records import load_records
from petlbench.suite import load_suite
from tests.conftest import TINY_ARGS, petlbench_cli


def test_eleven_point_ap_by_hand():
    # points (recall, precision): (.5, 1), (.5, .5), (1, 2/3), (1, .5), then sklearn's (0, 1):
    # thresholds 1.0 .. 0.6 take 2/3, 0.5 .. 0.0 take 1
    assert average_precision(np.array([.9, .8, .7, .6]), np.array([1, 0, 1, 0])) == pytest.approx((5 * 2 / 3 + 6) / 11)
    # tied scores are one threshold: (1, .5) for 1.0 .. 0.1, the appended (0, 1) for 0.0
    assert average_precision(np.array([.5, .5]), np.array([1, 0])) == pytest.approx(6 / 11)
    assert average_precision(np.array([.9, .1, .2]), np.array([1, 0, 0])) == 1.0  # perfect ranking


def test_map_leaves_out_classes_without_positives():
    scores = np.array([[.9, .1, .5], [.8, .2, .4], [.7, .3, .1]])
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]])  # class 1 has no positive image
    expected = (average_precision(scores[:, 0], targets[:, 0]) + average_precision(scores[:, 2], targets[:, 2])) / 2
    assert mean_average_precision(scores, targets) == pytest.approx(expected)
    assert hits(torch.tensor([0, 2, 1]), torch.from_numpy(targets)).item() == 2  # top class among the image's labels


def write_voc(root: Path, per_split=(("train", 12), ("val", 6), ("test", 8))) -> Path:
    """ELEVATER's layout: {split}_ic.txt beside each zip unpacked into a folder named after it. 3 classes; colour
    channel c is bright when the image holds class c, so a linear probe can learn it."""
    folder = root / "voc-2007-classification"
    rng = np.random.default_rng(0)
    for split, count in per_split:
        zip_name = "test.zip" if split == "test" else "train.zip"
        lines = []
        for i in range(count):
            labels = sorted({i % 3, (i * 7 + 1) % 3} if i % 2 else {i % 3})
            pixels = rng.integers(0, 60, (32, 32, 3))
            for c in labels:
                pixels[..., c] += 150
            rel = f"JPEGImages/{split}_{i:03d}.png"
            (folder / zip_name[:-4] / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / zip_name[:-4] / rel)
            lines.append(f"{zip_name}@{rel} {','.join(map(str, labels))}")
        (folder / f"{split}_ic.txt").write_text("\n".join(lines) + "\n")
    return root


def voc_suite(path: Path) -> Path:
    path.write_text(
        "name: tinyelevater\nlayout: domainbed\n"
        f"backbone: {{name: vit_tiny_patch16_224, args: {TINY_ARGS}, pretrained: false}}\n"
        "train: {epochs: 2, warmup_epochs: 0, batch_size: 8, eval_batch_size: 64}\n"
        "tasks:\n  - {name: voc, classes: 3, dataset: voc-2007-classification, domain: test, train_domains: [train],"
        " multilabel: true}\n")
    return path


def test_index_files_become_multi_hot_labels(tmp_path):
    root = write_voc(tmp_path / "data")
    (task,) = load_suite(str(voc_suite(tmp_path / "s.yaml"))).tasks
    items = read_split(root / "voc-2007-classification", task, "val")
    assert len(items) == 6 and items[1][1] == (0, 1, 1)  # image 1 holds classes 1 and 2
    assert items[0] == (root.absolute() / "voc-2007-classification" / "train" / "JPEGImages" / "val_000.png",
                        (1, 0, 0))
    assert all(p.is_file() for p, _ in items) and all(sum(y) >= 1 for _, y in items)


def test_a_run_records_map11_and_the_table_shows_it(tmp_path):
    root = write_voc(tmp_path / "data")
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(voc_suite(tmp_path / "s.yaml")), "--data-root", str(root),
                         "--methods", "linear", "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record,) = load_records(out)
    assert record["status"] == "success", record.get("error")
    assert record["protocol"]["metric"] == "map11" and 0 < record["metrics"]["test_map11"] <= 1
    assert record["data"]["train_images"] == 18 and record["data"]["eval_images"] == 8  # train + val, test
    assert 0 <= record["metrics"]["test_top1"] <= 1  # top-1 hits, kept for every reader of test_top1
    shots = petlbench_cli("run", "--suite", str(voc_suite(tmp_path / "s.yaml")), "--data-root", str(root),
                          "--methods", "linear", "--out", str(tmp_path / "few"), "--quiet", "--shots", "2",
                          "--cache-dir", str(tmp_path / "cache"))
    (failed,) = load_records(tmp_path / "few")
    assert failed["status"] == "failed" and failed["error"].startswith("--shots: task voc is multi-label"), shots.stdout
    table = petlbench_cli("table", str(out), "--format", "md")
    assert table.returncode == 0, table.stderr
    assert f"{100 * record['metrics']['test_map11']:.1f}" in table.stdout
    assert "voc: 11-point mAP (ELEVATER's metric for multi-label VOC 2007) (%), not top-1" in table.stdout


def test_data_check_counts_classes_and_reports_bad_index_lines(tmp_path):
    root = write_voc(tmp_path / "data")
    suite = voc_suite(tmp_path / "s.yaml")
    check = petlbench_cli("data", "check", "--suite", str(suite), "--data-root", str(root))
    assert check.returncode == 0 and "| 3/3 " in check.stdout, check.stdout  # classes, not label combinations
    show = petlbench_cli("data", "show", "--suite", str(suite), "--data-root", str(root), "--out", str(tmp_path / "show"))
    assert show.returncode == 0 and "voc: train 12, val 6, test 8; classes 3/3" in show.stdout, show.stdout + show.stderr
    index = root / "voc-2007-classification" / "test_ic.txt"
    for text, needle in (("test.zip@JPEGImages/test_000.png 0,3\n", "test_ic.txt:1: expected '<image path> "
                                                                         "<label>[,<label>...]' with labels in [0, 3)"),
                         ("../../outside.png 1\n", "escapes the dataset folder"),
                         (None, "test_ic.txt: index file not found (task voc is multi-label")):
        index.unlink() if text is None else index.write_text(text)
        check = petlbench_cli("data", "check", "--suite", str(suite), "--data-root", str(root))
        assert check.returncode == 1 and needle in check.stdout, check.stdout
    run = petlbench_cli("run", "--suite", str(suite), "--data-root", str(root), "--methods", "linear",
                        "--out", str(tmp_path / "r"), "--quiet")
    assert "index file not found" in run.stdout + run.stderr and "Traceback" not in run.stdout + run.stderr


def test_elevater_suite_has_voc_with_its_names():
    voc = next(t for t in load_suite("elevater").tasks if t.name == "voc-2007-classification")
    assert voc.multilabel and voc.classes == 20 == len(voc.classnames) and voc.templates == ["a photo of a {}."]
    assert voc.classnames[0] == "aeroplane" and voc.classnames[-1] == "tvmonitor"
    assert "Elevater_Toolkit_IC@00d0af7" in voc.classnames_source


def test_tune_searches_each_point_with_binary_cross_entropy(tmp_path):
    """The head-only grid trains points together with cross-entropy: a multi-label task runs each point on its own."""
    root = write_voc(tmp_path / "data")
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(voc_suite(tmp_path / "s.yaml")), "--data-root", str(root),
                         "--methods", "linear", "--out", str(out), "--quiet", "--protocol", "tune",
                         "--grid", "{lr: [0.1, 0.01]}", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = load_records(out)
    search = [r for r in records if r["protocol"].get("stage") == "search"]
    final = [r for r in records if r["protocol"].get("stage") == "final"]
    assert len(search) == 2 and len(final) == 1 and all(r["status"] == "success" for r in records)
    assert all("val_map11" in r["metrics"] and "val_top1" in r["metrics"] for r in search)
    assert "test_map11" in final[0]["metrics"]
