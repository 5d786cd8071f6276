"""The data build told from what is on disk (petlbench.data.build) on builds the tests write in the real formats: NOAH's
JPEG extraction, the lossless TFDS build (PNGs and the agreed petlbench_build.json), and what is neither; the build in
`data check` and in every record; split sanity warnings (petlbench.data.sanity)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.cli import main
from petlbench.data.build import MANIFEST, NOAH_LISTS, identify
from petlbench.data.sanity import split_warnings
from petlbench.records import load_records, structure_problem
from petlbench.sweep.runner import run
from tests.conftest import write_tiny_suite
from tests.fixtures import write_vtab_tree

SIZES = {"train800": 24, "val200": 8, "test": 16}
ROLES = {"train": ["train800"], "val": ["val200"], "trainval": ["train800val200"], "test": ["test"]}


def clean_pixels(seed: int = 0, classes: int = 4, sizes: dict[str, int] = SIZES):
    """The build's source: per split, (RGB uint8 image, label) pairs; the class sets the mean colour."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in sizes.items():
        labels = [i % classes for i in range(n)]
        out[split] = [(np.clip(rng.normal(60 * c + 30, 40, (16, 16, 3)), 0, 255).astype(np.uint8), c) for c in labels]
    return out


def write_build(root: Path, name: str, fmt: str, data: dict, manifest: bool = True) -> Path:
    """A task folder in the NOAH layout: images/<split>/%06d.<jpg|png>, the four lists (train800val200 lists the
    train800 and val200 images), and for PNG with `manifest` the petlbench_build.json the TFDS build writes."""
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    lines = {}
    for split, items in data.items():
        lines[split] = []
        for i, (pixels, label) in enumerate(items):
            rel = f"images/{split}/{i:06d}.{'jpg' if fmt == 'JPEG' else 'png'}"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / rel, format=fmt, **({"quality": 75} if fmt == "JPEG" else {}))
            lines[split].append(f"{rel} {label}\n")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("".join(rows))
    if fmt == "PNG" and manifest:
        write_manifest(folder, images=sum(len(items) for items in data.values()))
    return folder


def write_manifest(folder: Path, images: int) -> None:
    """petlbench_build.json in the agreed format (`petlbench data build vtab1k --from tfds` writes it)."""
    slices = {"train800": "train[:800]", "val200": "train[45000:45200]",
              "train800val200": "train[:800]+train[45000:45200]", "test": "test"}
    (folder / MANIFEST).write_text(json.dumps({
        "build": "tfds-png", "tool": "petlbench data build", "petlbench_version": "0.0.test",
        "tfds": {"name": "cifar100:3.0.2", "splits": slices},
        "lists": {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in NOAH_LISTS},
        "images": images}, indent=2))


# --------------------------------------------------------------------------------------------------
# the fingerprint


def test_noah_jpeg_fixture_tree(tmp_path):
    task = write_vtab_tree(tmp_path, tasks=["cifar"])["cifar"]
    build = identify(task.dir)
    assert build.name == "noah-jpeg" and build.reason == \
        "NOAH's four lists; the 6 sampled images (first and last of each list) are JPEGs that decode"
    build = identify(write_build(tmp_path, "jpeg", "JPEG", clean_pixels()))
    assert build.name == "noah-jpeg"


def test_tfds_png_with_its_manifest(tmp_path):
    build = identify(write_build(tmp_path, "cifar", "PNG", clean_pixels()))
    assert build.name == "tfds-png", build
    assert build.reason == (f"{MANIFEST} (tfds cifar100:3.0.2) matches the four lists; the 6 sampled images "
                            "(first and last of each list) are PNGs that decode")  # train800val200: no new ones


def test_a_changed_list_makes_a_manifest_build_unknown(tmp_path):
    folder = write_build(tmp_path, "cifar", "PNG", clean_pixels())
    test_list = folder / "test.txt"
    before = hashlib.sha256(test_list.read_bytes()).hexdigest()
    rows = test_list.read_text().splitlines()
    path, label = rows[3].rsplit(maxsplit=1)
    rows[3] = f"{path} {(int(label) + 1) % 4}"  # one relabelled test image
    test_list.write_text("\n".join(rows) + "\n")
    build = identify(folder)
    now = hashlib.sha256(test_list.read_bytes()).hexdigest()
    assert build.name == "unknown"
    assert build.reason == (f"{MANIFEST}: test.txt changed since the build (sha256 {before[:12]}... recorded, "
                            f"{now[:12]}... now)")


@pytest.mark.parametrize("manifest, expected", [
    ("{not json", "petlbench_build.json: not valid JSON"),
    ('{"build": "noah-jpeg", "lists": {}}', "petlbench_build.json: build is 'noah-jpeg', expected 'tfds-png'"),
    ('{"build": "tfds-png"}', "petlbench_build.json: no 'lists' mapping of list file to sha256"),
    ('{"build": "tfds-png", "lists": {}}', "petlbench_build.json: holds no hash of train800.txt"),
])
def test_a_broken_manifest_is_unknown_with_the_reason(tmp_path, manifest, expected):
    folder = write_build(tmp_path, "cifar", "PNG", clean_pixels())
    (folder / MANIFEST).write_text(manifest)
    build = identify(folder)
    assert build.name == "unknown" and build.reason.startswith(expected), build


def test_png_without_manifest_and_jpeg_with_one_are_unknown(tmp_path):
    build = identify(write_build(tmp_path, "png", "PNG", clean_pixels(), manifest=False))
    assert build.name == "unknown" and build.reason.startswith(f"PNG images without a {MANIFEST}")
    folder = write_build(tmp_path, "jpeg", "JPEG", clean_pixels())
    write_manifest(folder, images=48)  # a manifest left behind, JPEGs unpacked over the build
    build = identify(folder)
    assert build.name == "unknown" and build.reason == f"{MANIFEST} says tfds-png, but the sampled images are JPEG"


def test_image_bytes_not_names_decide_and_every_sample_must_decode(tmp_path):
    folder = write_vtab_tree(tmp_path, tasks=["dtd"])["dtd"].dir
    assert identify(folder).name == "noah-jpeg"
    first = folder / "images" / "test" / "000000.jpg"  # test.txt's first image: a sampled one
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(first, format="PNG")  # a PNG under a .jpg name
    build = identify(folder)  # the sample's size and mtime changed: judged again, not the verdict kept before
    assert build.name == "unknown" and build.reason.startswith("mixed formats among the sampled images: ")
    assert "1 PNG (e.g. images/test/000000.jpg)" in build.reason
    first.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)  # JPEG magic, no image
    build = identify(folder)
    assert build.name == "unknown" and build.reason.startswith("sampled image images/test/000000.jpg: does not decode")
    first.unlink()
    assert identify(folder).reason.startswith("sampled image images/test/000000.jpg: unreadable")


def test_not_noah_layout_is_unknown(tmp_path):
    folder = write_vtab_tree(tmp_path, tasks=["dtd"])["dtd"].dir
    assert identify(folder, "fgvc").reason == "fgvc layout: builds are told apart for VTAB-1k's NOAH layout only"
    assert identify(tmp_path / "nowhere").reason == "task folder not found"
    (folder / "train800val200.txt").unlink()
    assert identify(folder).reason == "no train800val200.txt: not NOAH's layout"


def test_the_verdict_is_kept_per_process(tmp_path):
    folder = write_vtab_tree(tmp_path, tasks=["dtd"])["dtd"].dir
    assert identify(folder) is identify(folder)  # the second asks only the lists' hashes and the samples' stat


# --------------------------------------------------------------------------------------------------
# data check and the record


def check(capsys, *args: str) -> tuple[int, dict[str, list[str]], str, str]:
    code = main(["data", "check", *args])
    captured = capsys.readouterr()
    rows = {}
    for line in captured.out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "task":
            rows[cells[0]] = cells[1:]
    return code, rows, captured.out, captured.err


def test_data_check_prints_the_build_per_task(tmp_path, capsys):
    data = clean_pixels(classes=4)
    write_build(tmp_path, "dtd", "JPEG", data)
    write_build(tmp_path, "eurosat", "PNG", clean_pixels(seed=1))
    write_build(tmp_path, "svhn", "PNG", clean_pixels(seed=2), manifest=False)
    code, rows, out, _ = check(capsys, "--suite", "vtab1k", "--data-root", str(tmp_path), "--tasks", "dtd,eurosat,svhn")
    assert code == 0, out
    assert {task: row[-2] for task, row in rows.items()} == {"dtd": "noah-jpeg", "eurosat": "tfds-png",
                                                             "svhn": "unknown"}
    assert f"  svhn: PNG images without a {MANIFEST}" in out.split("build unknown")[1]


def test_record_carries_the_build_and_a_rebuild_is_another_run(tmp_path):
    """JPEG build, then the same folder rebuilt losslessly from the clean pixels (PNG + manifest): other pixels, so
    another data id and a second record; the build is in each. A PNG copy of the JPEGs' own pixels is the same data
    (same data id), whatever its files say: the build names the pixels' origin, the data id covers the pixels."""
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 4}, epochs=1)
    data, out, lines = clean_pixels(), tmp_path / "results", []
    write_build(tmp_path / "data", "count", "JPEG", data)
    (jpeg_run,) = run(str(suite), "linear", data_root=str(tmp_path / "data"), out=out, progress=False, log=lines.append)
    decoded = {split: [(np.asarray(Image.open(tmp_path / "data" / "count" / "images" / split / f"{i:06d}.jpg")
                                   .convert("RGB")), label) for i, (_, label) in enumerate(items)]
               for split, items in data.items()}
    write_build(tmp_path / "data", "count", "PNG", data)
    (png_run,) = run(str(suite), "linear", data_root=str(tmp_path / "data"), out=out, progress=False, log=lines.append)
    assert jpeg_run["status"] == png_run["status"] == "success"
    assert (jpeg_run["data"]["build"], png_run["data"]["build"]) == ("noah-jpeg", "tfds-png")
    assert png_run["data"]["build_reason"].startswith(f"{MANIFEST} (tfds cifar100:3.0.2) matches the four lists")
    assert jpeg_run["data_id"] != png_run["data_id"] and jpeg_run["config_id"] == png_run["config_id"]
    saved = load_records(out)
    assert sorted(r["data"]["build"] for r in saved) == ["noah-jpeg", "tfds-png"]
    assert all(structure_problem(r) is None for r in saved)

    write_build(tmp_path / "data", "count", "PNG", decoded)  # the JPEGs' decoded pixels, saved losslessly
    (again,) = run(str(suite), "linear", data_root=str(tmp_path / "data"), out=out, progress=False, log=lines.append)
    assert "done before, skipped" in lines[-1] and again["data_id"] == jpeg_run["data_id"]
    assert structure_problem({**jpeg_run, "data": {**jpeg_run["data"], "build": 3}}) == \
        "the key data.build is 3, expected a string"


# --------------------------------------------------------------------------------------------------
# split sanity


def balanced(n: int, classes: int) -> list[int]:
    return [i % classes for i in range(n)]


def test_random_like_splits_give_no_warning():
    labels = {"train800": balanced(80, 10), "val200": balanced(20, 10), "test": balanced(100, 10)}
    labels["train800val200"] = labels["train800"] + labels["val200"]
    assert split_warnings(labels, ROLES) == []
    sun = np.random.default_rng(0)  # sun397-like: 200 random images of 397 classes miss many, by chance only
    labels = {"train800": list(sun.integers(0, 397, 800)), "val200": list(sun.integers(0, 397, 200)),
              "test": list(sun.integers(0, 397, 4000))}
    warnings = split_warnings(labels, ROLES)
    assert len(warnings) == 1 and warnings[0].startswith("val200 lacks "), warnings  # said, with chance beside it
    assert "that train800 or test hold (a random 200 images would lack " in warnings[0]


def test_a_sorted_val_split_is_warned():
    """val200 taken from the sorted end of the data (two classes of ten): it lacks 8 classes (chance: 1.8) and is
    0.8 away from test's distribution (chance: 0.40); train800 holds half the classes (0.5 vs 0.21), and so
    train800val200 is 0.3 away (chance 0.19)."""
    labels = {"train800": balanced(80, 5), "val200": [8] * 10 + [9] * 10, "test": balanced(100, 10)}
    labels["train800val200"] = labels["train800"] + labels["val200"]
    warnings = split_warnings(labels, ROLES)
    assert warnings[0] == ("val200 lacks 8 of the 10 classes that train800 or test hold (a random 20 images would "
                           "lack 1.8): 0, 1, 2, 3, 4, 5, 6, 7")
    assert warnings[1:] == [
        "train800's class distribution is far from test's: total variation distance 0.50 (random draws of 80 images "
        "from test's reach 0.21 in 99 of 100)",
        "val200's class distribution is far from test's: total variation distance 0.80 (random draws of 20 images "
        "from test's reach 0.40 in 99 of 100)",
        "train800val200's class distribution is far from test's: total variation distance 0.30 (random draws of 100 "
        "images from test's reach 0.19 in 99 of 100)"]
    labels["train800"] = [c for c in range(10) for _ in range(8)]  # sorted by class, but all there: no warning
    assert split_warnings({**labels, "val200": balanced(20, 10), "train800val200": balanced(100, 10)}, ROLES) == []


def test_the_floor_keeps_large_splits_quiet():
    """5,000 images a few points off test's frequencies: far beyond chance (0.02), below the 0.10 floor."""
    test = balanced(5000, 2)
    train = [0] * 2700 + [1] * 2300  # TV 0.04
    assert split_warnings({"train": train, "val": balanced(500, 2), "test": test},
                          {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]}) == []


def test_data_check_warns_on_split_sanity_not_failing(tmp_path, capsys):
    data = clean_pixels(classes=4, sizes={"train800": 24, "val200": 8, "test": 40})
    data["val200"] = [(pixels, 0) for pixels, _ in data["val200"]]  # val200: one class of four
    write_build(tmp_path, "dtd", "JPEG", data)
    write_build(tmp_path, "eurosat", "JPEG", clean_pixels(seed=3, classes=4, sizes={"train800": 24, "val200": 8,
                                                                                  "test": 40}))
    code, rows, out, err = check(capsys, "--suite", "vtab1k", "--data-root", str(tmp_path), "--tasks", "dtd,eurosat",
                                 "--strict")
    assert code == 0 and rows["dtd"][-1] == "ok", out  # warnings, not errors, even with --strict
    section = out.split("split sanity (warnings, not errors):\n")[1].split("\n\n")[0].splitlines()
    assert section[0].startswith("  dtd: val200 lacks 3 of the 4 classes that train800 or test hold")
    assert section[1].startswith("  dtd: val200's class distribution is far from test's: total variation "
                                 "distance 0.75")
    assert not any("eurosat" in line for line in section)
    assert "petlbench: warning: split sanity: 2 warning(s) in dtd (see above)" in err
