"""`petlbench data build vtab1k --from tfds`: VTAB-1k from the user's prepared TFDS datasets, as lossless PNGs in the
NOAH layout, with the official splits (`vtab_tfds`: which TFDS slice each split is, and each task's preprocessing).

Why: the NOAH build re-encodes every image as JPEG (quality 75), which moves some tasks by more than the differences
between methods; VPT and Adapter+ trained on the TFDS tensors themselves. This build writes those tensors, after
task_adaptation's own preprocessing (labels, grey -> RGB), bit for bit. Slices are read as task_adaptation reads
them (`as_dataset(split, shuffle_files=False)`, TFDS's default read config), so image i of a list is the image i
of NOAH's extraction from the same TFDS version, only not re-encoded.

Each task folder is written beside its final place and renamed into it when complete, with
`petlbench_build.json` (the TFDS dataset and slices, the list files' sha256, the image count), which the data-build
fingerprint reads. A finished task folder is never replaced unless `force`. Nothing is downloaded here: a dataset
not prepared in the TFDS data dir is one line naming the `tfds build` command.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from petlbench.data.vtab_tfds import BY_TASK, COUNTS, SPLITS, TfdsTask, slices
from petlbench.errors import UserError
from petlbench.records import write_atomic
from petlbench.suite import load_suite

MANIFEST = "petlbench_build.json"
INSTALL = "pip install petlbench[tfds]"


def _closest(thresholds: list[float], value: np.floating) -> int:
    """task_adaptation's `reduce_max(where(thrs - dist < 0))` in float32: the last threshold below the value
    (-1 when none is: the caller's range check refuses it, where TF would give int64's minimum)."""
    below = np.nonzero(np.asarray(thresholds, np.float32) - np.float32(value) < 0)[0]
    return int(below.max()) if below.size else -1


def _kitti_vehicle_distance(ex: dict) -> int:
    objects = ex["objects"]
    z = np.asarray(objects["location"], np.float32)[:, 2][np.asarray(objects["type"]) < 3]  # car, van, truck
    return _closest([-100.0, 8.0, 20.0, 999.0], np.min(np.append(z, np.float32(1000.0))))  # kitti.py:90-103


def _floor_bins(key: str, original: int, classes: int) -> Callable[[dict], int]:
    """dsprites: nearby values grouped into `classes` bins, floor(value / (original / classes)) in float32."""
    factor = np.float32(original / classes)
    return lambda ex: int(np.floor(np.float32(ex[key]) / factor))


LABELS: dict[str, Callable[[dict], int]] = {  # task_adaptation's label functions, on one numpy example
    "label": lambda ex: int(ex["label"]),
    "clevr_count": lambda ex: len(ex["objects"]["size"]) - 3,  # clevr.py:32-34
    "clevr_dist": lambda ex: _closest([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0],  # clevr.py:45-53
                                      np.min(np.asarray(ex["objects"]["pixel_coords"], np.float32)[:, 2])),
    "kitti_dist": _kitti_vehicle_distance,
    "dsprites_loc": _floor_bins("label_x_position", 32, 16),  # dsprites.py:58-65, 95-103
    "dsprites_ori": _floor_bins("label_orientation", 40, 16),
    "smallnorb_azi": lambda ex: int(ex["label_azimuth"]),  # smallnorb.py:79-82
    "smallnorb_ele": lambda ex: int(ex["label_elevation"]),
}


def task_image(entry: TfdsTask, ex: dict) -> np.ndarray:
    """The image task_adaptation hands the model: as stored, or grey tiled to 3 channels (dsprites also x 255)."""
    image = np.asarray(ex["image"])
    if entry.image == "image":
        return image
    tiled = np.repeat(image, 3, axis=-1)
    return tiled * np.uint8(255) if entry.image == "tile255" else tiled


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    pixels = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def import_tfds() -> Any:
    """tensorflow_datasets with tensorflow (it reads the TFRecord files), or one line naming the extra."""
    import timm  # noqa: F401  before tensorflow: torch's triton (which timm imports) segfaults when loaded after it
    try:
        import tensorflow  # noqa: F401
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise UserError(f"--from tfds needs tensorflow-datasets and tensorflow ({exc.name or exc} is missing): "
                        f"{INSTALL}") from None
    return tfds


def open_builder(tfds: Any, entry: TfdsTask, data_dir: str | None) -> Any:
    """The task's TFDS builder at VTAB-1k's version, prepared in `data_dir` (default: TFDS's own)."""
    base = entry.tfds.split(":")[0]
    where = f"--data_dir {data_dir}" if data_dir else "(TFDS's default data dir)"
    try:
        builder = tfds.builder(entry.tfds, data_dir=data_dir)
    except Exception as exc:  # tfds raises AssertionError/ValueError/DatasetNotFoundError here
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{entry.task}: TFDS cannot open {entry.tfds}, the version VTAB-1k reads ({reason}); "
                        f"prepare that version {where}, e.g. with the tensorflow-datasets release that builds it"
                        ) from None
    if not builder.is_prepared():
        manual = (" (a manual download: put the files in --manual_dir, see the instructions `tfds build` prints)"
                  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) else "")
        dir_flag = f" --data_dir {data_dir}" if data_dir else ""
        raise UserError(f"{entry.task}: TFDS dataset {full_name(builder)} is not prepared in {builder.data_dir}; "
                        f"run `tfds build {base}:{builder.version}{dir_flag}`{manual}")
    return builder


def full_name(builder: Any) -> str:
    config = builder.builder_config.name if builder.builder_config else None
    return f"{builder.name}{'/' + config if config else ''}:{builder.version}"


def build_vtab1k(to: str | Path, tasks: list[str] | None = None, tfds_dir: str | None = None,
                 force: bool = False) -> list[Path]:
    """Build the selected tasks (default all 19) under `to`; the finished task folders."""
    suite = load_suite("vtab1k")
    selected = suite.select(tasks)
    dest = Path(to).expanduser()
    for task in selected:  # refuse before hours of work, not after
        if (dest / task.name).exists() and not force:
            raise UserError(f"{dest / task.name}: already exists (a finished task folder is never replaced "
                            "silently); remove it or pass --force")
    tfds = import_tfds()
    builders = {task.name: open_builder(tfds, BY_TASK[task.name], tfds_dir) for task in selected}
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for task in selected:
        done.append(build_task(tfds, BY_TASK[task.name], builders[task.name], dest, task.classes, force))
    return done


def build_task(tfds: Any, entry: TfdsTask, builder: Any, dest: Path, classes: int, force: bool = False) -> Path:
    """One task folder: images/<split>/%06d.png, <split>.txt, petlbench_build.json; renamed into place whole."""
    from petlbench import __version__

    cut = slices(entry, builder.info.splits["train"].num_examples)
    work = Path(tempfile.mkdtemp(prefix=f".{entry.task}.building-", dir=dest))
    try:
        lists, images = {}, 0
        for split in SPLITS:
            lines = write_split(tfds, entry, builder, cut[split], work, split, classes)
            images += len(lines)
            text = "".join(lines).encode()
            (work / f"{split}.txt").write_bytes(text)
            lists[f"{split}.txt"] = hashlib.sha256(text).hexdigest()
            print(f"{entry.task}: {split} = {full_name(builder)} {cut[split]}: {len(lines)} images", flush=True)
        write_atomic(work / MANIFEST, {"build": "tfds-png", "tool": "petlbench data build",
                                       "petlbench_version": __version__,
                                       "tfds": {"name": full_name(builder), "splits": cut},
                                       "lists": lists, "images": images})
        final = dest / entry.task
        if final.exists():
            if not force:
                raise UserError(f"{final}: appeared while building; not replaced (pass --force)")
            old = Path(tempfile.mkdtemp(prefix=f".{entry.task}.replaced-", dir=dest))
            os.replace(final, old / entry.task)
            os.replace(work, final)
            shutil.rmtree(old)
        else:
            os.replace(work, final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_split(tfds: Any, entry: TfdsTask, builder: Any, cut: str, work: Path, split: str,
                classes: int) -> list[str]:
    """The split's PNGs under work/images/<split>/ and its list lines; counts and labels checked."""
    folder = work / "images" / split
    folder.mkdir(parents=True)
    label_of = LABELS[entry.label]
    lines = []
    for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=cut, shuffle_files=False))):
        label = label_of(ex)
        if not 0 <= label < classes:
            raise UserError(f"{entry.task}: {full_name(builder)} {cut} example {i} gives label {label}, "
                            f"outside [0, {classes}) after the task's preprocessing ({entry.label})")
        rel = f"images/{split}/{i:06d}.png"
        (work / rel).write_bytes(png_bytes(task_image(entry, ex)))
        lines.append(f"{rel} {label}\n")
    want = COUNTS.get(split)
    if want is not None and len(lines) != want or not lines:
        raise UserError(f"{entry.task}: {full_name(builder)} {cut} holds {len(lines)} examples, "
                        f"expected {want or 'at least one'} for {split}")
    return lines
