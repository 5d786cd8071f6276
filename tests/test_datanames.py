"""Class names read from the user's own data (petlbench.data.datanames, issue 16): NABirds' classes.txt through its
sparse class ids, CoOp's split_zhou triples; `data check` reports them and a CLIP run records them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from petlbench.data import datanames
from petlbench.errors import UserError
from petlbench.suite import check_classnames, load_suite
from tests.conftest import TINY_ARGS, assert_one_line_error, petlbench_cli
from tests.test_shots import write_coop_task

# NABirds' real files, cut down: classes.txt holds parents and leaves (ids as in NABirds), hierarchy.txt the tree,
# VPT's split json the leaves' own ids (sparse)
CLASSES = {0: "Birds", 1: "Perching Birds", 2: "Hawks", 295: "Red-tailed Hawk (Adult)",
           296: "Red-tailed Hawk (Immature)", 817: "Northern Cardinal (Adult Male)", 1010: "Wood Duck (Female)"}
HIERARCHY = {1: 0, 2: 0, 295: 2, 296: 2, 817: 1, 1010: 0}
LEAVES = [1010, 295, 817, 296]  # in no order: labels follow the ids sorted


def write_nabirds(folder: Path, leaves=LEAVES, classes=CLASSES) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "classes.txt").write_text("".join(f"{cid} {name}\n" for cid, name in classes.items()))
    (folder / "hierarchy.txt").write_text("".join(f"{c} {p}\n" for c, p in HIERARCHY.items()))
    for split in ("train", "val", "test"):
        entries = {}
        for cid in leaves:
            rel = f"{cid:04d}/{split}_{cid}.jpg"
            (folder / "images" / rel).parent.mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (cid % 256, 0, 0)).save(folder / "images" / rel)
            entries[rel] = cid
        (folder / f"{split}.json").write_text(json.dumps(entries))


def fgvc_suite(path: Path, classes: int = 4) -> Path:
    path.write_text(f"name: birds\nlayout: fgvc\ntasks:\n  - {{name: nabirds, classes: {classes}, images: images, "
                    "classnames_from: classes.txt}\n")
    return path


def test_nabirds_names_follow_its_sparse_ids_in_label_order(tmp_path):
    write_nabirds(tmp_path / "data" / "nabirds")
    suite = load_suite(str(fgvc_suite(tmp_path / "birds.yaml")))
    (task,) = suite.tasks
    assert task.classnames == []  # nothing until the data root is known
    datanames.resolve(suite, tmp_path / "data")
    assert task.classnames == ["Red-tailed Hawk (Adult)", "Red-tailed Hawk (Immature)",
                               "Northern Cardinal (Adult Male)", "Wood Duck (Female)"]  # ids 295, 296, 817, 1010
    assert task.classnames_source.endswith("classes.txt (the dataset's own class list)")
    check_classnames(task)  # what a CLIP run asks


def test_packaged_fgvc_reads_nabirds_names_from_its_data(tmp_path):
    nabirds = next(t for t in load_suite("fgvc").tasks if t.name == "nabirds")
    assert nabirds.classnames_from == "classes.txt" and nabirds.classnames == []
    assert "classes.txt" in nabirds.classnames_source
    root = tmp_path / "data"
    write_nabirds(root / "nabirds")
    suite = load_suite(str(fgvc_suite(tmp_path / "birds.yaml")))
    proc = petlbench_cli("data", "check", "--suite", str(suite.path), "--data-root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "names match classes: nabirds (4, no templates)" in proc.stdout


def test_split_files_with_contiguous_ids_are_refused_by_the_hierarchy(tmp_path):
    """Split files numbering classes 0..C-1 themselves would take the names of other classes (here parents)."""
    write_nabirds(tmp_path / "data" / "nabirds", leaves=[0, 1, 2, 295])
    suite = load_suite(str(fgvc_suite(tmp_path / "birds.yaml")))
    with pytest.raises(UserError, match=r"class id 0, a parent class in hierarchy.txt \('Birds'\)"):
        datanames.resolve(suite, tmp_path / "data")
    proc = petlbench_cli("data", "check", "--suite", suite.path, "--data-root", str(tmp_path / "data"))
    assert_one_line_error(proc, "hierarchy.txt", "leaf")


def test_an_id_missing_from_classes_txt_and_a_missing_file(tmp_path):
    write_nabirds(tmp_path / "data" / "nabirds", classes={k: v for k, v in CLASSES.items() if k != 817})
    suite = load_suite(str(fgvc_suite(tmp_path / "birds.yaml")))
    with pytest.raises(UserError, match="no line for class id 817"):
        datanames.resolve(suite, tmp_path / "data")
    (tmp_path / "data" / "nabirds" / "classes.txt").unlink()
    datanames.resolve(suite, tmp_path / "data")
    assert suite.tasks[0].classnames == [] and "classes.txt not found" in suite.tasks[0].classnames_source
    with pytest.raises(UserError, match="has no class names"):
        check_classnames(suite.tasks[0])


def coop_suite(path: Path) -> Path:
    path.write_text("\n".join([
        "name: tinycoop", "layout: coop", "backbone: {name: clip:tiny}",
        "train: {epochs: 1, warmup_epochs: 0, batch_size: 8, eval_batch_size: 64}",
        "tasks:", "  - {name: dtd, classes: 3, images: images, classnames_from: split_zhou, classnames: [x, y, z]}"]))
    return path


def test_coop11_reads_each_tasks_names_from_its_split_file(tmp_path):
    assert all(t.classnames_from == "split_zhou" for t in load_suite("coop11").tasks)
    split = write_coop_task(tmp_path / "data" / "dtd", classes=3, per_split=(2, 1, 2))
    for s in split:
        for entry in split[s]:
            entry[2] = ["banded", "blotchy", "braided"][entry[1]]  # CoOp's DTD names
    (tmp_path / "data" / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    suite = load_suite(str(coop_suite(tmp_path / "coop.yaml")))
    assert suite.tasks[0].classnames == ["x", "y", "z"]
    datanames.resolve(suite, tmp_path / "data")
    assert suite.tasks[0].classnames == ["banded", "blotchy", "braided"]  # the data's names win over the suite's
    assert suite.tasks[0].classnames_source.endswith("split_zhou_DescribableTextures.json (the class names of CoOp's "
                                                     "split file)")
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", suite.path, "--data-root", str(tmp_path / "data"), "--methods", "zeroshot",
                         "--random-init", "--out", str(out), "--no-samples", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    (record,) = [r for r in (json.loads(p.read_text()) for p in out.rglob("*.json")) if "method" in r]
    assert record["status"] == "success" and record["text"]["classnames"] == ["banded", "blotchy", "braided"]
    assert record["text"]["source"] == suite.tasks[0].classnames_source  # which file the names came from


def test_split_file_names_that_disagree_are_one_line(tmp_path):
    split = write_coop_task(tmp_path / "data" / "dtd", classes=3, per_split=(2, 1, 2))
    split["test"][0][2] = "banded"  # label 0 is "class 0" elsewhere
    (tmp_path / "data" / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    proc = petlbench_cli("data", "check", "--suite", str(coop_suite(tmp_path / "coop.yaml")),
                         "--data-root", str(tmp_path / "data"))
    assert_one_line_error(proc, "label 0 is named both 'class 0' and 'banded'")


def test_aircraft_names_are_its_variants(tmp_path):
    folder = tmp_path / "data" / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\nA300B4\nDC-3\n")
    for split in ("train", "val", "test"):
        lines = []
        for i, variant in enumerate(["707-320", "A300B4", "DC-3"]):
            Image.new("RGB", (8, 8)).save(folder / "images" / f"{split}{i}.jpg")
            lines.append(f"{split}{i} {variant}")
        (folder / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    path = tmp_path / "air.yaml"
    path.write_text(f"name: air\nlayout: coop\nbackbone: {{name: vit_tiny_patch16_224, args: {TINY_ARGS}}}\n"
                    "tasks:\n  - {name: fgvc_aircraft, classes: 3, classnames_from: split_zhou}\n")
    suite = load_suite(str(path))
    datanames.resolve(suite, tmp_path / "data")
    assert suite.tasks[0].classnames == ["707-320", "A300B4", "DC-3"]


def test_a_bad_classnames_from_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nlayout: fgvc\ntasks:\n  - {name: t, classes: 2, classnames_from: names.json}\n")
    assert_one_line_error(petlbench_cli("data", "check", "--suite", str(path), "--data-root", str(tmp_path)),
                          "tasks[0].classnames_from", "classes.txt, split_zhou", "'names.json'")
