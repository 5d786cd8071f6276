"""`petlbench data build vtab1k --from tfds` on datasets tensorflow-datasets mocks, one task per VTAB group, no
download. The CLI runs in a child process (tests/tfds_mocked.py says why); this process never imports tensorflow."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench import __version__
from petlbench.data import tfds_build
from petlbench.data.vtab_tfds import BY_TASK, TASKS, slices
from tests.conftest import petlbench_cli

BUILT = {"cifar": 23, "eurosat": 280, "dsprites_loc": 200}  # the task, and the test images its mocked dataset holds
TRAIN = {"cifar": 2000, "eurosat": 1400, "dsprites_loc": 2000}  # the mocked TFDS train splits (tfds_mocked.SIZES)
CLASSES = {"cifar": 100, "eurosat": 10, "dsprites_loc": 16}
SPLITS = ("train800", "val200", "train800val200", "test")


@pytest.fixture(scope="module")
def mocked(tmp_path_factory):
    """One child process: build, build again (refused), build with --force, a dataset not prepared."""
    work = tmp_path_factory.mktemp("tfds-build")
    root, tfds_dir, empty = work / "vtab-png", work / "tfds", work / "empty"
    empty.mkdir()
    build = ["data", "build", "vtab1k", "--from", "tfds", "--to", str(root), "--tasks", ",".join(BUILT),
             "--tfds-dir", str(tfds_dir)]
    not_prepared = ["data", "build", "vtab1k", "--from", "tfds", "--to", str(work / "out"), "--tasks", "dtd",
                    "--tfds-dir", str(empty)]
    calls = [build, build, [*build, "--tasks", "cifar", "--force"], not_prepared]
    argv = [str(tfds_dir), str(work / "results.json"), str(work / "expected.npz")]
    for call in calls:
        argv += ["--", *call]
    child = subprocess.run([sys.executable, str(Path(__file__).with_name("tfds_mocked.py")), *argv],
                           capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    with np.load(work / "expected.npz") as npz:
        expected = {k: npz[k] for k in npz.files}
    return {"root": root, "work": work, "empty": empty, "results": results, "expected": expected}


def read_list(task_dir: Path, split: str) -> list[tuple[str, int]]:
    return [(path, int(label)) for path, label in (line.split() for line in
                                                   (task_dir / f"{split}.txt").read_text().splitlines())]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_build_succeeds_and_checks_the_tasks(mocked):
    first = mocked["results"][0]
    assert first["code"] == 0, first["stderr"]
    assert "cifar: val200 = cifar100:3.0.2 train[1800:2000]: 200 images" in first["stdout"]
    assert "3 of 3 tasks ok" in first["stdout"]  # the build ends with `data check` of what it wrote


@pytest.mark.parametrize("task", sorted(BUILT))
def test_layout_counts_labels_and_manifest(mocked, task):
    task_dir, entry = mocked["root"] / task, BY_TASK[task]
    lists = {split: read_list(task_dir, split) for split in SPLITS}
    assert {s: len(v) for s, v in lists.items()} == {"train800": 800, "val200": 200, "train800val200": 1000,
                                                     "test": BUILT[task]}
    for split, entries in lists.items():
        assert [p for p, _ in entries] == [f"images/{split}/{i:06d}.png" for i in range(len(entries))]
        assert all(0 <= label < CLASSES[task] for _, label in entries)
        assert sorted(p.name for p in (task_dir / "images" / split).iterdir()) == [Path(p).name for p, _ in entries]
    assert sorted(p.name for p in task_dir.iterdir()) == ["images", "petlbench_build.json", "test.txt",
                                                          "train800.txt", "train800val200.txt", "val200.txt"]
    manifest = json.loads((task_dir / "petlbench_build.json").read_text())
    assert manifest == {
        "build": "tfds-png", "tool": "petlbench data build", "petlbench_version": __version__,
        "tfds": {"name": {"cifar": "cifar100:3.0.2", "eurosat": "eurosat/rgb:2.0.0", "dsprites_loc": "dsprites:2.0.0"}[task],
                 "splits": slices(entry, TRAIN[task])},
        "lists": {f"{s}.txt": hashlib.sha256((task_dir / f"{s}.txt").read_bytes()).hexdigest() for s in SPLITS},
        "images": 2000 + BUILT[task]}
    assert manifest["tfds"]["name"] == str(mocked["expected"][f"{task}/name"])


@pytest.mark.parametrize("task", sorted(BUILT))
def test_pngs_are_the_tfds_arrays_of_the_official_slices(mocked, task):
    """val200 and test, image by image: what TFDS holds at that index of the official slice, after the task's
    preprocessing (dsprites: grey 0/1 tiled to RGB 0/255), decoded from the PNG bit for bit, with its label
    (dsprites_loc: x position // 2); train800val200
    holds exactly train800's and val200's images."""
    task_dir, expected = mocked["root"] / task, mocked["expected"]
    grey = task == "dsprites_loc"
    for split in ("val200", "test"):
        entries = read_list(task_dir, split)
        stored = expected[f"{task}/{split}/labels"]
        assert [label for _, label in entries] == (stored // 2 if grey else stored).tolist()
        for i, (path, _) in enumerate(entries):
            want = expected[f"{task}/{split}/{i}"]
            assert want.dtype == np.uint8 and want.shape[-1] == (1 if grey else 3)
            want = np.repeat(want, 3, axis=-1) * 255 if grey else want
            assert np.array_equal(pixels(task_dir / path), want), (split, i)
    if grey:  # the binning was exercised: 32 positions into all 16 classes, pixels 0 and 255
        assert set((expected[f"{task}/val200/labels"] // 2).tolist()) == set(range(16))
        assert set(np.unique(pixels(task_dir / "images/val200/000000.png")).tolist()) == {0, 255}

    def digest(split):
        return sorted((hashlib.sha256(pixels(task_dir / p).tobytes()).hexdigest(), label)
                      for p, label in read_list(task_dir, split))
    assert digest("train800val200") == sorted(digest("train800") + digest("val200"))


def test_data_check_reads_the_build(mocked):
    result = petlbench_cli("data", "check", "--suite", "vtab1k", "--data-root", str(mocked["root"]),
                           "--tasks", ",".join(BUILT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(task in result.stdout for task in BUILT)


def test_a_finished_task_is_not_replaced_without_force(mocked):
    refused, forced = mocked["results"][1], mocked["results"][2]
    assert refused["code"] == 2 and len(refused["stderr"].splitlines()) == 1
    assert "already exists" in refused["stderr"] and "--force" in refused["stderr"]
    assert forced["code"] == 0, forced["stderr"]  # cifar rebuilt whole (the same bytes: the tests above read it)
    assert not [p.name for p in mocked["root"].iterdir() if p.name.startswith(".")]  # no work folder left


def test_a_dataset_not_prepared_names_the_tfds_build_command(mocked):
    result = mocked["results"][3]
    assert result["code"] == 2 and len(result["stderr"].splitlines()) == 1
    assert f"run `tfds build dtd:3.0.1 --data_dir {mocked['empty']}`" in result["stderr"]
    assert not (mocked["work"] / "out").exists()


def test_missing_extra_is_one_line(tmp_path, monkeypatch):
    for module in ("tensorflow", "tensorflow_datasets"):  # what `import` sees when they are not installed
        monkeypatch.setitem(sys.modules, module, None)
    result = petlbench_cli("data", "build", "vtab1k", "--from", "tfds", "--to", str(tmp_path), "--tasks", "dtd")
    assert result.returncode == 2
    assert "pip install petlbench[tfds]" in result.stderr and len(result.stderr.splitlines()) == 1


def test_structured_labels_match_task_adaptation():
    """The numpy label functions against values task_adaptation's own TF expressions give (computed with
    tensorflow 2.21: dsprites.py:99-102, clevr.py:51, kitti.py:96-102), bin edges included."""
    loc = [v // 2 for v in range(32)]
    ori = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 12, 12, 12,
           13, 13, 14, 14, 14, 15, 15]
    assert [tfds_build.LABELS["dsprites_loc"]({"label_x_position": np.int64(v)}) for v in range(32)] == loc
    assert [tfds_build.LABELS["dsprites_ori"]({"label_orientation": np.int64(v)}) for v in range(40)] == ori
    for dist, want in ((0.5, 0), (7.99, 0), (8.0, 0), (8.25, 1), (8.5, 1), (8.51, 2), (9.0, 2), (9.75, 4), (10.0, 4),
                       (12.0, 5), (99.9, 5)):
        coords = np.array([[1.0, 2.0, dist + 1.0], [3.0, 4.0, dist]], np.float32)  # the nearest object counts
        assert tfds_build.LABELS["clevr_dist"]({"objects": {"pixel_coords": coords}}) == want, dist
    for z, kinds, want in (([5.0, 30.0], [0, 1], 0), ([8.0], [0], 0), ([25.0, 9.0], [2, 0], 1), ([20.0], [1], 1),
                           ([3.0, 25.0], [4, 1], 2), ([3.0], [5], 3), ([], [], 3)):  # type >= 3: no vehicle -> 1000
        ex = {"objects": {"location": np.array([[0.0, 0.0, v] for v in z], np.float32).reshape(-1, 3),
                          "type": np.array(kinds, np.int64)}}
        assert tfds_build.LABELS["kitti_dist"](ex) == want, (z, kinds)
    for n in range(3, 11):  # clevr.py:32-34: 3 to 10 objects are classes 0 to 7
        assert tfds_build.LABELS["clevr_count"]({"objects": {"size": np.zeros(n, np.int64)}}) == n - 3
    assert [tfds_build.LABELS[f"smallnorb_{k}"]({"label_azimuth": np.int64(17), "label_elevation": np.int64(8)})
            for k in ("azi", "ele")] == [17, 8]
    grey = np.array([[[0], [1]]], np.uint8)
    dsprite = tfds_build.task_image(BY_TASK["dsprites_loc"], {"image": grey})
    assert dsprite.tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(tfds_build.png_bytes(dsprite))).convert("RGB")), dsprite)
    assert tfds_build.task_image(BY_TASK["smallnorb_ele"], {"image": grey * 7}).tolist() == [[[0, 0, 0], [7, 7, 7]]]


def test_the_table_covers_the_suite():
    from petlbench.suite import load_suite
    assert [t.task for t in TASKS] == [t.name for t in load_suite("vtab1k").tasks]
    assert all(t.label in tfds_build.LABELS and "task_adaptation" in t.source for t in TASKS)
    assert slices(BY_TASK["cifar"], 50000)["val200"] == "train[45000:45200]"
    assert slices(BY_TASK["caltech101"], 3060)["train800val200"] == "train[:800]+train[2754:2954]"
    assert slices(BY_TASK["eurosat"], 27000)["test"] == "train[21600:]"
    assert slices(BY_TASK["dsprites_loc"], 737280)["test"] == "train[663552:]"
    assert slices(BY_TASK["smallnorb_azi"], 24300) == {"train800": "train[:800]", "val200": "test[:200]",
                                                       "train800val200": "train[:800]+test[:200]",
                                                       "test": "test[50%:]"}
    assert slices(BY_TASK["clevr_dist"], 70000)["test"] == "validation"
