"""A held-out domain with a subset of the training classes (ImageNet-A/-R: 200 of ImageNet's 1000 wnids): its folders
take the training labels, the test logits are restricted to the subset before the argmax, the record says so."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from petlbench.data.domains import read_split, scored_labels
from petlbench.engine.features import FeatureData
from petlbench.engine.train import evaluate
from petlbench.errors import UserError
from petlbench.records import load_records
from petlbench.specs import TrainConfig
from petlbench.suite import load_suite
from tests.conftest import TINY_ARGS, assert_one_line_error, petlbench_cli
from tests.test_domains import write_pacs

WNIDS = [f"n0{i}000000" for i in range(6)]
SUBSET = [WNIDS[1], WNIDS[3], WNIDS[5]]


def tiny_shift(tmp_path: Path, subset=SUBSET, test_folders=SUBSET) -> tuple[Path, Path]:
    root = write_pacs(tmp_path / "data", domains=("train",), classes=WNIDS, per_class=4)
    write_pacs(root, domains=("adversarial",), classes=test_folders, per_class=3)
    suite = tmp_path / "shift.yaml"
    suite.write_text(
        "name: shift\nlayout: domainbed\n"
        f"backbone: {{name: vit_tiny_patch16_224, args: {TINY_ARGS}, pretrained: false}}\n"
        "train: {epochs: 1, warmup_epochs: 0, batch_size: 16, eval_batch_size: 64}\n"
        "tasks:\n  - {name: adv, classes: 6, dataset: PACS, domain: adversarial, train_domains: [train],\n"
        f"     class_subset: [{', '.join(subset)}]}}\n")
    return root, suite


def test_subset_folders_take_the_training_labels(tmp_path):
    root, suite = tiny_shift(tmp_path)
    (task,) = load_suite(str(suite)).tasks
    test = read_split(root / "PACS", task, "test")
    assert {(p.parent.name, y) for p, y in test} == {(WNIDS[1], 1), (WNIDS[3], 3), (WNIDS[5], 5)}
    assert scored_labels(root / "PACS", task, ["test"]) == [1, 3, 5]
    assert scored_labels(root / "PACS", task, ["val"]) is None  # tune's validation is ImageNet's own: all classes
    assert task.domains == ["train"]  # not a DomainBed environment: the training split stays as without it


def test_the_argmax_is_taken_among_the_scored_classes():
    """Class 0 has the largest logit everywhere; among {1, 3, 5} the label wins: 0% unrestricted, 100% restricted."""
    logits = torch.tensor([[9.0, 5, 1, 1, 1, 1], [9.0, 1, 1, 5, 1, 1], [9.0, 1, 1, 1, 7, 5]])
    data = FeatureData(logits, torch.tensor([1, 3, 5]))
    cfg = TrainConfig(precision="fp32")
    assert evaluate(nn.Identity(), data, cfg, torch.device("cpu")) == 0.0
    assert evaluate(nn.Identity(), data, cfg, torch.device("cpu"), scored=[1, 3, 5]) == 1.0
    assert evaluate(nn.Identity(), data, cfg, torch.device("cpu"), scored=[1, 3, 4, 5]) == pytest.approx(2 / 3)


def test_a_run_scores_among_the_subset_and_records_it(tmp_path):
    root, suite = tiny_shift(tmp_path)
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--data-root", str(root), "--methods", "linear", "--out",
                         str(out), "--quiet", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record,) = load_records(out)
    assert record["status"] == "success" and record["metrics"]["scored_classes"] == 3
    subset = record["data"]["domains"]["class_subset"]
    assert subset["classes"] == 3 and subset["source"].endswith("key 'tasks[0].class_subset'")
    assert record["num_classes"] == 6 and record["data"]["eval_images"] == 9
    samples = np.load(next(out.rglob("*.samples.npz")))
    assert set(samples["classes"][:, 0].tolist()) <= {1, 3, 5}  # every prediction is one of the subset's
    assert set(samples["classes"][:, :3].ravel().tolist()) == {1, 3, 5}  # the other classes have probability 0
    assert record["metrics"]["test_top1"] == pytest.approx(float(np.mean(samples["classes"][:, 0] == samples["labels"])))


def test_folders_outside_the_subset_or_the_training_classes_are_one_line(tmp_path):
    root, suite = tiny_shift(tmp_path, test_folders=[*SUBSET, WNIDS[0]])
    proc = petlbench_cli("data", "check", "--suite", str(suite), "--data-root", str(root))
    assert proc.returncode != 0 and f"class folder '{WNIDS[0]}' is not in the class_subset" in proc.stdout
    root, suite = tiny_shift(tmp_path / "b", subset=[*SUBSET[:2], "n09999999"], test_folders=[*SUBSET[:2],
                                                                                                 "n09999999"])
    (task,) = load_suite(str(suite)).tasks
    with pytest.raises(UserError, match="class folder 'n09999999' is in no training domain of task adv"):
        read_split(root / "PACS", task, "test")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nlayout: domainbed\ntasks:\n  - {name: a, classes: 2, dataset: D, domain: x, "
                   "train_domains: [y], class_subset: [p, q, r]}\n")
    assert_one_line_error(petlbench_cli("data", "check", "--suite", str(bad), "--data-root", str(tmp_path)),
                          "tasks[0].class_subset", "more than the task's 2 classes")


def test_packaged_imagenet_a_and_r_subsets():
    shift = {t.name: t for t in load_suite("imagenet_shift").tasks}
    for name, repo in (("imagenet_a", "hendrycks/natural-adv-examples"), ("imagenet_r", "hendrycks/imagenet-r")):
        task = shift[name]
        assert len(task.class_subset) == 200 == len(set(task.class_subset)) and task.classes == 1000
        assert task.class_subset == sorted(task.class_subset) and all(w.startswith("n") for w in task.class_subset)
        assert task.class_subset_source.startswith(repo) and task.train_domains == ["train"]
    a, r = set(shift["imagenet_a"].class_subset), set(shift["imagenet_r"].class_subset)
    assert a != r and "n01498041" in a & r  # shark, in both
    assert shift["imagenet"].domains == ["imagenetv2-matched-frequency-format-val", "sketch", "train", "val"]
