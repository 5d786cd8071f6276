"""The decoded data's identity (TensorData.digest): the runner puts it into a run's id, so changed data trains again."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from petlbench.data.decode import SplitCache, load_images, load_split_arrays
from petlbench.suite import load_suite
from tests.fixtures import jpeg, write_fgvc_tree, write_vtab_tree

PREP = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
VTAB, FGVC = load_suite("vtab1k"), load_suite("fgvc")
KITTI = next(t for t in VTAB.tasks if t.name == "kitti")


@pytest.fixture
def task_dir(tmp_path):
    return write_vtab_tree(tmp_path / "data", tasks=["kitti"], sizes={"train800": 5, "val200": 3})["kitti"].dir


def digests(task_dir, splits, cache) -> set[str]:
    """The digest of `splits` without the cache, decoding into it, and read back from it: one value expected."""
    return {load_images("noah", task_dir, KITTI, splits, PREP, cache_dir=c).digest for c in (None, cache, cache)}


def test_same_data_same_digest_with_and_without_cache(tmp_path, task_dir):
    (single,) = digests(task_dir, ["val200"], tmp_path / "cache")
    (both,) = digests(task_dir, ["train800", "val200"], tmp_path / "cache")
    (swapped,) = digests(task_dir, ["val200", "train800"], tmp_path / "cache")
    assert len({single, both, swapped}) == 3 and all(len(d) == 64 for d in (single, both, swapped))
    split = load_split_arrays("noah", task_dir, KITTI, "val200", PREP, None)
    assert split.digest == load_split_arrays("noah", task_dir, KITTI, "val200", PREP, tmp_path / "cache").digest
    data = load_images("noah", task_dir, KITTI, ["val200"], PREP, cache_dir=tmp_path / "cache")
    assert data.to("cpu").digest == single


def test_fgvc_train_and_val_with_and_without_cache(tmp_path):
    info = write_fgvc_tree(tmp_path / "data", tasks=["OxfordFlowers"])["OxfordFlowers"]
    task = next(t for t in FGVC.tasks if t.name == "OxfordFlowers")
    prep = {**PREP, "crop_pct": 0.875}
    found = {load_images("fgvc", info.dir, task, ["train", "val"], prep, cache_dir=c).digest
             for c in (None, tmp_path / "c", tmp_path / "c")}
    assert len(found) == 1 and None not in found


def test_one_changed_label_changes_the_digest(tmp_path, task_dir):
    (before,) = digests(task_dir, ["train800", "val200"], tmp_path / "cache")
    split = task_dir / "val200.txt"
    lines = split.read_text().splitlines()
    path, label = lines[1].rsplit(maxsplit=1)
    lines[1] = f"{path} {(int(label) + 1) % KITTI.classes}"
    split.write_text("\n".join(lines) + "\n")
    (after,) = digests(task_dir, ["train800", "val200"], tmp_path / "cache")
    assert after != before


def test_one_changed_image_at_the_same_path_changes_the_digest(tmp_path, task_dir):
    (before,) = digests(task_dir, ["train800"], tmp_path / "cache")
    (task_dir / "images" / "train800" / "000002.jpg").write_bytes(jpeg((16, 16), (250, 3, 3)))
    (after,) = digests(task_dir, ["train800"], tmp_path / "cache")
    assert after != before


def test_split_cache_hands_the_digest_to_the_runner(tmp_path, task_dir):
    """SplitCache.get is what the runner calls; it only reads the plan's suite layout, task and data root."""
    plan = SimpleNamespace(suite=VTAB, task=KITTI, data_root=task_dir.parent)
    got = SplitCache(tmp_path / "cache").get(plan, ["train800", "val200"], PREP, train=True)
    (expected,) = digests(task_dir, ["train800", "val200"], tmp_path / "cache")
    assert got.digest == expected
