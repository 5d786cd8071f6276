"""Per-sample outputs: final runs keep every test image's top-5 classes, probabilities and label beside the record;
the reader verifies them and measures per-class accuracy, calibration and two runs' agreement, ensemble, oracle."""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch

from petlbench.data.demo import write_task
from petlbench.engine.samples import TopK, samples_path, write_samples
from petlbench.engine.train import evaluate
from petlbench.errors import UserError
from petlbench.records import load_records, read_record
from petlbench.report.samples import (Samples, agreement, class_counts, ece, ensemble_accuracy, load_samples,
                                      oracle_accuracy, per_class_accuracy, read_samples)
from petlbench.specs import TrainConfig
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite

SIZES = {"train800": 48, "val200": 16, "test": 40}


def constructed(classes, probs, labels, order="test:abc", num_classes=6) -> Samples:
    return Samples(np.array(classes), np.array(probs, dtype=np.float32), np.array(labels), num_classes, order,
                   Path(f"{order}.samples.npz"))


def test_samples_file_round_trip_and_its_hash(tmp_path):
    """Write (atomically, sha256 in the record), read back the same arrays; any change, loss or absence is one line."""
    logits = torch.tensor([[0.1, 2.0, 1.0, -1.0, 0.5, 0.0, 0.2], [3.0, 0.0, 0.0, 1.0, 2.0, -2.0, 0.1],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    top = TopK()
    predicted = top.add(logits, torch.tensor([1, 4, 6]))
    assert predicted.tolist() == [1, 0, 0], "the first of the largest logits, as argmax"
    record_path = tmp_path / "run.json"
    entry = write_samples(samples_path(record_path), top, 7, "test:0123456789abcdef")
    assert entry["file"] == "run.samples.npz" and entry["top"] == 5 and entry["images"] == 3
    record = {"samples": entry}
    s = load_samples(record_path, record)
    assert s.classes.tolist() == [[1, 2, 4, 6, 0], [0, 4, 3, 6, 1], [0, 1, 2, 3, 4]]
    assert s.labels.tolist() == [1, 4, 6] and s.num_classes == 7 and s.order == "test:0123456789abcdef"
    expected = torch.softmax(logits, dim=1).gather(1, torch.tensor(s.classes)).numpy()
    np.testing.assert_allclose(s.probs, expected, rtol=1e-3)  # stored as float16
    with np.load(samples_path(record_path)) as z:
        assert z["classes"].dtype == np.int16 and z["probs"].dtype == np.float16
    assert s.top1() == 1 / 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left"

    path = samples_path(record_path)
    other = TopK()
    other.add(logits.flip(1), torch.tensor([1, 4, 6]))
    write_samples(path, other, 7, "test:0123456789abcdef")  # the file replaced under the record
    with pytest.raises(UserError, match="sha256 differs") as info:
        load_samples(record_path, record)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    path.unlink()
    with pytest.raises(UserError, match="samples file missing"):
        load_samples(record_path, record)
    with pytest.raises(UserError, match="samples lost"):
        load_samples(record_path, {"samples": {"file": path.name, "lost": "cannot write the samples (x)"}})
    with pytest.raises(UserError, match="kept no samples"):
        load_samples(record_path, {"metrics": {}})
    path.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read samples"):
        read_samples(path)


def test_fewer_classes_than_five_and_evaluate_counts_from_them():
    """Two classes: the top is 2; with a collector, evaluate's top-1 is the one without it."""
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(11, 3), torch.randint(0, 2, (11,))
    from petlbench.engine.features import FeatureData
    data = FeatureData(x, y)
    top = TopK()
    cfg = TrainConfig(eval_batch_size=4)
    assert evaluate(model, data, cfg, torch.device("cpu"), top) == evaluate(model, data, cfg, torch.device("cpu"))
    classes, probs, labels = top.arrays()
    assert classes.shape == (11, 2) and labels.tolist() == y.tolist()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_per_class_accuracy_weighted_mean_is_top1():
    s = constructed([[0, 1], [1, 0], [1, 2], [2, 1], [0, 2]], [[.9, .1]] * 5, [0, 1, 2, 2, 0], num_classes=4)
    acc = per_class_accuracy(s)
    assert acc[:3].tolist() == [1.0, 1.0, 0.5] and np.isnan(acc[3]), "class 3 is not in the test split"
    counts = class_counts(s)
    assert counts.tolist() == [2, 1, 2, 0]
    assert np.nansum(acc * counts) / counts.sum() == s.top1() == 4 / 5


def test_ece_on_a_constructed_example_by_hand():
    """15 bins of width 1/15, (lo, hi]: 0.9375 falls in bin 14, 0.5 in bin 7, 0.25 in bin 3.
    bin 14: 1 of 2 right, confidence 0.9375 -> |0.5 - 0.9375| = 0.4375; bin 7: 2 of 2 right -> |1 - 0.5| = 0.5;
    bin 3: 0 of 2 right -> 0.25. Each bin holds 2 of 6 images: ECE = (0.4375 + 0.5 + 0.25) / 3 = 0.3958333..."""
    s = constructed([[0, 1], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0]],
                    [[.9375, .05], [.9375, .05], [.5, .2], [.5, .2], [.25, .2], [.25, .2]],
                    labels=[0, 0, 2, 3, 0, 0])
    assert ece(s) == pytest.approx((0.4375 + 0.5 + 0.25) / 3, abs=1e-12)
    perfect = constructed([[0, 1], [1, 0]], [[1.0, 0.0], [1.0, 0.0]], labels=[0, 1])
    assert ece(perfect) == 0.0, "confidence 1 falls in the last bin, (14/15, 1]"


def test_agreement_ensemble_and_oracle_on_constructed_predictions():
    labels = [0, 1, 2, 3, 4, 5]
    a = constructed([[0, 1], [0, 2], [0, 2], [3, 1], [0, 4], [1, 5]],
                    [[.6, .3], [.5, .3], [.7, .2], [.8, .1], [.5, .4], [.45, .44]], labels)
    b = constructed([[1, 0], [1, 0], [2, 0], [3, 2], [0, 4], [2, 5]],
                    [[.5, .4], [.9, .05], [.45, .4], [.6, .3], [.6, .3], [.46, .45]], labels)
    assert a.top1() == 2 / 6 and b.top1() == 3 / 6
    assert agreement(a, b) == 2 / 6  # images 3 (both 3) and 4 (both 0)
    assert oracle_accuracy(a, b) == 4 / 6  # 0 (a), 1 (b), 2 (b), 3 (both); 4 and 5 neither
    # ensemble: 0: class 0 (.6+.4)/2 > class 1 (.3+.5)/2, right; 1: class 1 (0+.9)/2 > class 0 (.5+.05)/2 (class 1 is
    # outside a's top: 0), right; 2: class 0 .55 > class 2 .325, wrong; 3: right; 4: class 0, wrong; 5: class 5
    # (.44+.45)/2 beats 1 (.225) and 2 (.23): right although neither run is
    assert ensemble_accuracy(a, b) == 4 / 6
    other = constructed(b.classes, b.probs, labels, order="test:def")
    with pytest.raises(UserError, match="not scored on the same test images"):
        agreement(a, other)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """full (the whole model evaluates), linear (the head on cached features) and partial (the tail on cached
    activations): the three ways a final run is evaluated."""
    tmp = tmp_path_factory.mktemp("samples")
    write_task(tmp / "data", "count", seed=0, sizes=SIZES)
    suite = write_tiny_suite(tmp / "tiny.yaml", {"count": 6}, epochs=2)
    result = petlbench_cli("run", "--suite", str(suite), "--methods", "full,linear,partial", "--data-root",
                           str(tmp / "data"), "--out", str(tmp / "results"), "--seeds", "0,1", "--quiet")
    assert result.returncode == 0, result.stderr
    return tmp


def test_real_runs_keep_samples_whose_top1_is_the_records(tiny_results):
    out = tiny_results / "results"
    paths = sorted((out / "tiny" / "count").glob("*.json"))
    assert len(paths) == 6
    features = {}
    for path in paths:
        record = read_record(path)
        s = load_samples(path, record)
        assert record["samples"] == {"file": path.with_suffix(".samples.npz").name, "sha256": record["samples"]["sha256"],
                                     "top": 5, "images": SIZES["test"]}
        assert s.top1() == record["metrics"]["test_top1"], path.name  # exactly, not approximately
        acc, counts = per_class_accuracy(s), class_counts(s)
        assert np.nansum(acc * counts) / counts.sum() == pytest.approx(record["metrics"]["test_top1"], abs=1e-12)
        assert s.num_classes == 6 and s.order == f"test:{record['data']['split_files_sha256']['test']}"
        features[record["method"]["name"]] = record["metrics"]["features"]
    assert features["linear"] == "cached" and features["partial"].startswith("cached before block")
    assert features["full"].startswith("not cached")


def test_table_per_class_and_ece(tiny_results):
    out = str(tiny_results / "results")
    table = petlbench_cli("table", out, "--per-class", "count", "--format", "csv")
    assert table.returncode == 0, table.stderr
    rows = [line.split(",") for line in table.stdout.splitlines()]
    header, body = rows[0], {r[0]: r for r in rows[1:]}
    assert header[:2] == ["class", "test images"] and {"full", "linear", "partial"} <= set(header)
    assert sum(int(body[str(k)][1]) for k in range(6)) == SIZES["test"]
    records = load_records(out)
    for method in ("full", "linear", "partial"):
        i = header.index(method)
        top1 = np.mean([r["metrics"]["test_top1"] for r in records if r["method"]["name"] == method])
        assert body["all images (top-1)"][i] == f"{100 * top1:.1f}"
        weighted = sum(float(body[str(k)][i] or 0) * int(body[str(k)][1]) for k in range(6)) / SIZES["test"]
        assert weighted == pytest.approx(100 * top1, abs=0.2), "cells are rounded to 0.1"
    md = petlbench_cli("table", out, "--ece")
    assert md.returncode == 0 and "ECE (%)" in md.stdout and "15 equal-width bins" in md.stdout
    line = next(line for line in md.stdout.splitlines() if line.startswith("| linear"))
    expected = np.mean([100 * ece(load_samples(p)) for p in Path(out).rglob("linear__*.json")])
    assert line.rstrip(" |").split("|")[-1].strip() == f"{expected:.1f}"
    assert_one_line_error(petlbench_cli("table", out, "--per-class", "nope"), "nope", "count")
    assert_one_line_error(petlbench_cli("table", out, "--ece", "--report", "max-test"), "--ece")


def test_pairwise_on_two_real_runs(tiny_results):
    task = tiny_results / "results" / "tiny" / "count"
    full, linear = (load_samples(next(task.glob(f"{m}__seed0__*.json"))) for m in ("full", "linear"))
    assert 0 <= agreement(full, linear) <= 1
    assert oracle_accuracy(full, linear) >= max(full.top1(), linear.top1())
    assert 0 <= ensemble_accuracy(full, linear) <= oracle_accuracy(full, linear)
    assert agreement(full, full) == 1.0 and ensemble_accuracy(full, full) == full.top1()


def test_compare_reports_agreement_ensemble_and_oracle_from_the_samples(tiny_results):
    result = petlbench_cli("compare", str(tiny_results / "results"), "full", "linear", "--format", "json")
    assert result.returncode == 0, result.stderr
    (comparison,) = json.loads(result.stdout)["comparisons"]
    (section,) = comparison["sections"]
    rows = {(r["task"], r["seed"]): r for r in section["pairs"]}
    assert rows and not section["skipped"]
    for path in (tiny_results / "results" / "tiny").glob("*/full__seed*__*.json"):
        full = load_samples(path)
        seed = int(path.name.split("__seed")[1].split("__")[0])
        linear = load_samples(next(path.parent.glob(f"linear__seed{seed}__*.json")))
        row = rows[(path.parent.name, seed)]
        assert row["A"] == pytest.approx(100 * full.top1()) and row["B"] == pytest.approx(100 * linear.top1())
        assert row["agree"] == pytest.approx(100 * agreement(full, linear))
        assert row["ensemble"] == pytest.approx(100 * ensemble_accuracy(full, linear))
        assert row["oracle"] == pytest.approx(100 * oracle_accuracy(full, linear))
    text = petlbench_cli("compare", str(tiny_results / "results"), "full", "linear").stdout
    assert "per-sample: agreement, ensemble and oracle" in text and "oracle: either run right" in text


def test_no_samples_writes_none(tmp_path):
    write_task(tmp_path / "data", "count", seed=0, sizes=SIZES)
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out = tmp_path / "results"
    result = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tmp_path / "data"),
                           "--out", str(out), "--no-samples", "--quiet")
    assert result.returncode == 0, result.stderr
    assert not list(out.rglob("*.npz"))
    (record,) = load_records(out)
    assert record["status"] == "success" and "samples" not in record
    assert_one_line_error(petlbench_cli("table", str(out), "--per-class", "count"), "kept samples")


def test_tune_keeps_samples_for_finals_only_and_a_replaced_record_takes_them_along(tmp_path):
    write_task(tmp_path / "data", "count", seed=0, sizes=SIZES)
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out, task = tmp_path / "results", tmp_path / "results" / "tiny" / "count"
    args = ["run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tmp_path / "data"),
            "--out", str(out), "--quiet", "--protocol", "tune", "--grid", "{lr: [0.1, 0.01]}"]
    assert petlbench_cli(*args).returncode == 0
    assert not list((task / "search").glob("*.npz")), "tuning runs never see the test set"
    assert all("samples" not in r for r in load_records(task / "search"))
    (final,) = task.glob("linear__*.json")
    first = load_samples(final)
    assert first.top1() == read_record(final)["metrics"]["test_top1"]

    final.with_suffix(".safetensors").unlink()  # weights gone: trained again, the old record set aside with its samples
    again = petlbench_cli(*args)
    assert again.returncode == 0 and "training again" in again.stdout, again.stdout
    (kept,) = (task / "replaced").glob("linear__*.json")
    moved = load_samples(kept)  # its own file, verified against its own record's sha256
    assert moved.file == kept.with_suffix(".samples.npz")
    assert np.array_equal(moved.classes, first.classes) and load_samples(final).top1() == read_record(final)["metrics"]["test_top1"]


def test_a_samples_file_that_cannot_be_written_keeps_the_result(tmp_path):
    write_task(tmp_path / "data", "count", seed=0, sizes=SIZES)
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out = tmp_path / "results"
    args = ["run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tmp_path / "data"),
            "--out", str(out), "--quiet"]
    assert petlbench_cli(*args).returncode == 0
    (record_path,) = out.rglob("linear__*.json")
    for path in (record_path, record_path.with_suffix(".safetensors"), samples_path(record_path)):
        path.unlink()
    samples_path(record_path).mkdir()  # a folder where the file goes: the write fails, the run stands
    result = petlbench_cli(*args)
    assert result.returncode == 0, result.stderr
    record = read_record(record_path)
    assert record["status"] == "success" and "cannot write the samples" in record["samples"]["lost"]
    with pytest.raises(UserError, match="samples lost"):
        load_samples(record_path)
