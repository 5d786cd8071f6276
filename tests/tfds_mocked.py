"""Child process of tests/test_tfds_build.py: the real `petlbench data build` CLI on datasets tensorflow-datasets
mocks (`tfds.testing.mock_data`), no download.

A process of its own because tensorflow and torch's triton clash: importing triton (timm does) after tensorflow
segfaults, so tensorflow must never enter the pytest process, where later tests import timm.

The mocked datasets have their real features, metadata written here with small split sizes, and examples that
depend on (split, index), so a slice read at the wrong offset shows. Usage:
    python tests/tfds_mocked.py TFDS_DIR OUT_JSON EXPECTED_NPZ -- CLI-ARGS [-- CLI-ARGS ...]
runs each CLI call inside the mock (stderr and exit code into OUT_JSON), then saves what TFDS holds at val200's and
test's indices of each built task (image and label as stored) into EXPECTED_NPZ.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import zlib
from pathlib import Path

import numpy as np

import petlbench.cli
from petlbench.data.tfds_build import full_name, import_tfds
from petlbench.data.vtab_tfds import BY_TASK, slices

tfds = import_tfds()  # timm before tensorflow, as the CLI imports them (see import_tfds)
import tensorflow as tf  # noqa: E402
from tensorflow_datasets.testing.mocking import RandomFakeGenerator  # noqa: E402

# The smallest split sizes that keep VTAB's slices apart (val200 after train800, test after both).
SIZES = {"cifar100:3.*.*": {"train": 2000, "test": 23},  # natural: val200 = train[1800:2000]
         "eurosat/rgb:2.*.*": {"train": 1400},          # specialized: val200 = train[840:1040], test = train[1120:]
         "dsprites:2.*.*": {"train": 2000}}             # structured: val200 = train[1600:1800], test = train[1800:]


def fake_example(builder, split: str, index: int) -> dict:
    """The example at `index` of TFDS split `split`: random within the dataset's features, fixed by both (dsprites'
    pixels 0 or 1, as its real ones)."""
    seed = zlib.crc32(f"{builder.name}:{split}:{index}".encode())
    return RandomFakeGenerator(builder.info.features, 1, max_value=2 if builder.name == "dsprites" else None,
                               seed=seed)[0]


def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    """TFDS's own slicing (ReadInstruction) over the fabricated examples (fixed shapes: stacked, one tensor each)."""
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(self.info.splits)
    examples = [fake_example(self, p.splitname, i) for p in parts
                for i in range(p.from_ or 0, self.info.splits[p.splitname].num_examples if p.to is None else p.to)]
    return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda *xs: np.stack(xs), *examples))


def write_metadata(root: Path) -> None:
    """dataset_info.json and features.json of each mocked dataset, with SIZES."""
    for name, sizes in SIZES.items():
        builder = tfds.builder(name, data_dir=str(root))
        builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
            name=split, shard_lengths=[n], num_bytes=0, filename_template=None) for split, n in sizes.items()]))
        Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(builder.data_dir)


def cli(args: list[str]) -> dict:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        code = petlbench.cli.main(args)
    return {"args": args, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()}


def expected(tasks: list[str]) -> dict[str, np.ndarray]:
    """Per task and split (val200, test): the image and label TFDS holds at the slice's indices, as stored."""
    arrays = {}
    for task in tasks:
        entry = BY_TASK[task]
        builder = tfds.builder(entry.tfds)
        cut = slices(entry, builder.info.splits["train"].num_examples)
        arrays[f"{task}/name"] = np.array(full_name(builder))
        for split in ("val200", "test"):
            (part,) = tfds.core.ReadInstruction.from_spec(cut[split]).to_absolute(builder.info.splits)
            stop = builder.info.splits[part.splitname].num_examples if part.to is None else part.to
            labels = []
            for n, index in enumerate(range(part.from_ or 0, stop)):
                ex = fake_example(builder, part.splitname, index)
                arrays[f"{task}/{split}/{n}"] = ex["image"]
                labels.append(ex["label_x_position" if builder.name == "dsprites" else "label"])
            arrays[f"{task}/{split}/labels"] = np.array(labels)
    return arrays


def main(argv: list[str]) -> None:
    tfds_dir, out_json, out_npz, *rest = argv
    calls = split_calls(rest)
    write_metadata(Path(tfds_dir))
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=tfds_dir,
                                as_dataset_fn=fake_as_dataset):
        results = [cli(args) for args in calls]
        built = sorted({t for r in results if r["code"] == 0 and r["args"][:2] == ["data", "build"]
                        for t in r["args"][r["args"].index("--tasks") + 1].split(",")})
        np.savez(out_npz, **expected(built))
    Path(out_json).write_text(json.dumps(results))


def split_calls(rest: list[str]) -> list[list[str]]:
    calls: list[list[str]] = []
    for arg in rest:
        if arg == "--":
            calls.append([])
        else:
            calls[-1].append(arg)
    return calls


if __name__ == "__main__":
    main(sys.argv[1:])
