"""`petlbench data build vtab1k --from tfds` on datasets tensorflow-datasets mocks (`tfds.testing.mock_data`): no
download. The mocked datasets have the real features, metadata written here with small split sizes, and examples
that depend on (split, index), so a slice read at the wrong offset shows; one task per VTAB group is built."""
from __future__ import annotations

import hashlib
import io
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.testing.mocking import RandomFakeGenerator

from petlbench.data import tfds_build
from petlbench.data.vtab_tfds import BY_TASK, TASKS, slices
from tests.conftest import petlbench_cli

# Split sizes of the mocked datasets: the smallest that keep VTAB's slices apart (val200 after train800, test after
# both), so that every list has its real count.
SIZES = {"cifar100:3.*.*": {"train": 2000, "test": 23},            # natural: val200 = train[1800:2000]
         "eurosat/rgb:2.*.*": {"train": 1400},                    # specialized: val200 = train[840:1040], test train[1120:]
         "clevr:3.*.*": {"train": 2000, "validation": 17, "test": 5}}  # structured: test is TFDS's validation
BUILT = {"cifar": 23, "eurosat": 280, "clevr_count": 17}            # test images each task gets


def fake_example(builder, split: str, index: int) -> dict:
    """The example at `index` of TFDS split `split`: random within the dataset's features, fixed by both. CLEVR
    gets 3 to 10 objects (its real range; the generator gives each object field a length of its own)."""
    seed = zlib.crc32(f"{builder.name}:{split}:{index}".encode())
    ex = RandomFakeGenerator(builder.info.features, 1, seed=seed)[0]
    if builder.name == "clevr":
        n = 3 + seed % 8
        ex["objects"] = {k: np.resize(v, (n, *v.shape[1:])) for k, v in ex["objects"].items()}
    return ex


def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    """TFDS's slicing (ReadInstruction), over the fabricated examples."""
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(self.info.splits)
    indices = [(p.splitname, i) for p in parts
               for i in range(p.from_ or 0, self.info.splits[p.splitname].num_examples if p.to is None else p.to)]
    specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), self.info.features.get_tensor_info())
    return tf.data.Dataset.from_generator(lambda: (fake_example(self, s, i) for s, i in indices),
                                          output_signature=specs)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
    """A TFDS data dir holding each mocked dataset's metadata (dataset_info.json, features.json) with SIZES."""
    root = tmp_path_factory.mktemp("tfds")
    for name, sizes in SIZES.items():
        builder = tfds.builder(name, data_dir=str(root))
        builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
            name=split, shard_lengths=[n], num_bytes=0, filename_template=None) for split, n in sizes.items()]))
        Path(builder.data_dir).mkdir(parents=True)
        builder.info.write_to_directory(builder.data_dir)
    return root


def mocked(tfds_dir: Path):
    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tfds_dir),
                                  as_dataset_fn=fake_as_dataset)


def build(tfds_dir: Path, to: Path, *extra: str):
    with mocked(tfds_dir):
        return petlbench_cli("data", "build", "vtab1k", "--from", "tfds", "--to", str(to), "--tasks",
                             ",".join(BUILT), "--tfds-dir", str(tfds_dir), *extra)


@pytest.fixture(scope="module")
def built(tfds_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab-png")
    result = build(tfds_dir, root)
    assert result.returncode == 0, result.stderr + result.stdout
    return root


def read_list(task_dir: Path, split: str) -> list[tuple[str, int]]:
    return [(path, int(label)) for path, label in (line.split() for line in
                                                   (task_dir / f"{split}.txt").read_text().splitlines())]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("task", sorted(BUILT))
def test_layout_counts_labels_and_manifest(built, tfds_dir, task):
    task_dir = built / task
    entry = BY_TASK[task]
    lists = {split: read_list(task_dir, split) for split in ("train800", "val200", "train800val200", "test")}
    assert {s: len(v) for s, v in lists.items()} == {"train800": 800, "val200": 200, "train800val200": 1000,
                                                     "test": BUILT[task]}
    classes = {"cifar": 100, "eurosat": 10, "clevr_count": 8}[task]
    for split, entries in lists.items():
        assert [p for p, _ in entries] == [f"images/{split}/{i:06d}.png" for i in range(len(entries))]
        assert all(0 <= label < classes for _, label in entries)
    assert sorted(p.name for p in task_dir.iterdir()) == ["images", "petlbench_build.json", "test.txt",
                                                          "train800.txt", "train800val200.txt", "val200.txt"]

    manifest = json.loads((task_dir / "petlbench_build.json").read_text())
    with mocked(tfds_dir):
        builder = tfds.builder(entry.tfds)
        train = builder.info.splits["train"].num_examples
    assert manifest == {
        "build": "tfds-png", "tool": "petlbench data build", "petlbench_version": tfds_build_version(),
        "tfds": {"name": tfds_build.full_name(builder), "splits": slices(entry, train)},
        "lists": {f"{s}.txt": hashlib.sha256((task_dir / f"{s}.txt").read_bytes()).hexdigest() for s in lists},
        "images": 2000 + BUILT[task]}
    assert manifest["tfds"]["name"] == {"cifar": "cifar100:3.0.2", "eurosat": "eurosat/rgb:2.0.0",
                                        "clevr_count": "clevr:3.1.0"}[task]


def tfds_build_version() -> str:
    from petlbench import __version__
    return __version__


@pytest.mark.parametrize("task", sorted(BUILT))
def test_pngs_are_the_tfds_arrays_of_the_official_slices(built, tfds_dir, task):
    """val200 and test, image by image: the example TFDS holds at that index of that split, after the task's
    preprocessing, decoded from the PNG bit for bit; train800val200 holds exactly train800's and val200's images."""
    task_dir, entry = built / task, BY_TASK[task]
    with mocked(tfds_dir):
        builder = tfds.builder(entry.tfds)
        cut = slices(entry, builder.info.splits["train"].num_examples)
        for split in ("val200", "test"):
            (part,) = tfds.core.ReadInstruction.from_spec(cut[split]).to_absolute(builder.info.splits)
            for i, (path, label) in enumerate(read_list(task_dir, split)):
                ex = fake_example(builder, part.splitname, (part.from_ or 0) + i)
                image = tfds_build.task_image(entry, ex)
                assert image.dtype == np.uint8 and image.shape[-1] == 3
                assert np.array_equal(pixels(task_dir / path), image), (split, i)
                want = len(ex["objects"]["size"]) - 3 if task == "clevr_count" else int(ex["label"])
                assert label == want
    digest = lambda split: sorted((hashlib.sha256(pixels(task_dir / p).tobytes()).hexdigest(), label)
                                  for p, label in read_list(task_dir, split))
    assert digest("train800val200") == sorted(digest("train800") + digest("val200"))


def test_data_check_reads_the_build(built):
    result = petlbench_cli("data", "check", "--suite", "vtab1k", "--data-root", str(built), "--tasks", ",".join(BUILT))
    assert result.returncode == 0, result.stdout + result.stderr
    for task in BUILT:
        assert task in result.stdout


def test_a_finished_task_is_not_replaced_without_force(built, tfds_dir, tmp_path):
    before = (built / "cifar" / "petlbench_build.json").read_bytes()
    result = build(tfds_dir, built)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--force" in result.stderr and len(result.stderr.splitlines()) == 1
    assert (built / "cifar" / "petlbench_build.json").read_bytes() == before

    with mocked(tfds_dir):
        tfds_build.build_vtab1k(built, ["cifar"], tfds_dir=str(tfds_dir), force=True)
    assert (built / "cifar" / "petlbench_build.json").read_bytes() == before  # the same build, whole again
    assert not [p.name for p in built.iterdir() if p.name.startswith(".")]  # no work or replaced folder left


def test_a_dataset_not_prepared_names_the_tfds_build_command(tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    result = petlbench_cli("data", "build", "vtab1k", "--from", "tfds", "--to", str(tmp_path / "out"),
                           "--tasks", "dtd", "--tfds-dir", str(empty))
    assert result.returncode == 2
    assert f"run `tfds build dtd:3.0.1 --data_dir {empty}`" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_missing_extra_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # what `import` sees when it is not installed
    result = petlbench_cli("data", "build", "vtab1k", "--from", "tfds", "--to", str(tmp_path), "--tasks", "dtd")
    assert result.returncode == 2
    assert "pip install petlbench[tfds]" in result.stderr and len(result.stderr.splitlines()) == 1


def test_structured_labels_match_task_adaptation_in_tensorflow():
    """The numpy label functions against task_adaptation's own TF expressions, on every value and the bin edges."""
    for task, key, original in (("dsprites_loc", "label_x_position", 32), ("dsprites_ori", "label_orientation", 40)):
        for value in range(original):  # dsprites.py:99-102, class_division_factor = original / 16
            ta = tf.cast(tf.math.floordiv(tf.cast(tf.constant(value, tf.int64), tf.float32), original / 16), tf.int64)
            assert tfds_build.LABELS[task]({key: np.int64(value)}) == int(ta), (task, value)

    def ta_closest(thrs, dist):  # clevr.py:51, kitti.py:102
        return int(tf.reduce_max(tf.where((thrs - tf.constant(dist, tf.float32)) < 0)))

    clevr = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
    for dist in (0.5, 7.99, 8.0, 8.25, 8.5, 8.51, 9.0, 9.75, 10.0, 12.0, 99.9):
        coords = np.array([[1.0, 2.0, dist], [3.0, 4.0, dist + 1.0]], np.float32)
        assert tfds_build.LABELS["clevr_dist"]({"objects": {"pixel_coords": coords}}) == ta_closest(clevr, dist)
    kitti = np.array([-100.0, 8.0, 20.0, 999.0])
    for z, kinds, want in (([5.0, 30.0], [0, 1], 0), ([25.0, 9.0], [2, 0], 1), ([3.0, 25.0], [4, 1], 2),
                           ([3.0], [5], 3), ([], [], 3)):  # types >= 3 (pedestrian...) are no vehicle; none: 1000
        ex = {"objects": {"location": np.array([[0.0, 0.0, v] for v in z], np.float32).reshape(-1, 3),
                          "type": np.array(kinds, np.int64)}}
        assert tfds_build.LABELS["kitti_dist"](ex) == want
        assert want == ta_closest(kitti, min([v for v, k in zip(z, kinds) if k < 3] + [1000.0]))
    grey = np.array([[[0], [1]]], np.uint8)
    dsprite = tfds_build.task_image(BY_TASK["dsprites_loc"], {"image": grey})
    assert dsprite.tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(tfds_build.png_bytes(dsprite))).convert("RGB")), dsprite)
    norb = tfds_build.task_image(BY_TASK["smallnorb_ele"], {"image": grey * 7})
    assert norb.tolist() == [[[0, 0, 0], [7, 7, 7]]]


def test_the_table_covers_the_suite():
    from petlbench.suite import load_suite
    assert [t.task for t in TASKS] == [t.name for t in load_suite("vtab1k").tasks]
    assert all(t.label in tfds_build.LABELS and "task_adaptation" in t.source for t in TASKS)
    assert slices(BY_TASK["cifar"], 50000)["val200"] == "train[45000:45200]"
    assert slices(BY_TASK["eurosat"], 27000)["test"] == "train[21600:]"
    assert slices(BY_TASK["dsprites_loc"], 737280)["test"] == "train[663552:]"
    assert slices(BY_TASK["smallnorb_azi"], 24300) == {"train800": "train[:800]", "val200": "test[:200]",
                                                       "train800val200": "train[:800]+test[:200]",
                                                       "test": "test[50%:]"}
