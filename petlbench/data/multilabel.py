"""Multi-label tasks in the domainbed layout (ELEVATER's voc-2007-classification): an image may hold several
classes, so no folder per class can list it. The dataset folder holds ELEVATER's own index files instead:

    <data root>/<dataset>/train_ic.txt  val_ic.txt  test_ic.txt     (the toolkit's `index_path` names)
    line: "<image path> <label>[,<label>...]"    e.g. "train.zip@JPEGImages/000005.jpg 8,14"

as the toolkit ships them beside its zips: a path `<name>.zip@<inner path>` is read from the zip unpacked into the
folder `<name>/` beside the index (`train.zip@JPEGImages/000005.jpg` -> `train/JPEGImages/000005.jpg`); a plain
path is relative to the dataset folder. Labels are 0-based class ids (the toolkit's labelmap order), at least one
per image. The splits are the files: train, val (for `tune`'s choices) and test; `final` trains on train + val.
Labels become multi-hot rows (petlbench.engine.multilabel trains and scores them).
"""
from __future__ import annotations

import os
from pathlib import Path

from petlbench.errors import UserError
from petlbench.specs import Task

INDEX = "{}_ic.txt"


def index_file(folder_dir: Path, split: str) -> Path:
    return folder_dir / INDEX.format(split)


def read_split(folder_dir: Path, task: Task, split: str) -> list[tuple[Path, tuple[int, ...]]]:
    """(image, multi-hot label row) of every line of the split's index file, checked."""
    path = index_file(folder_dir, split)
    if not path.is_file():
        raise UserError(f"{path}: index file not found (task {task.name} is multi-label: the dataset folder holds "
                        f"ELEVATER's {INDEX.format('<split>')} files, lines '<image path> <label>[,<label>...]')")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the index file as UTF-8 text ({exc})") from None
    root = os.path.normpath(os.path.abspath(folder_dir))
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        ids = parts[1].split(",") if len(parts) == 2 else []
        if not ids or not all(i.isascii() and i.isdigit() and int(i) < task.classes for i in ids):
            raise UserError(f"{path}:{n}: expected '<image path> <label>[,<label>...]' with labels in "
                            f"[0, {task.classes}), got {line!r}")
        rel = parts[0]
        if "@" in rel:  # the toolkit's "<zip>@<path in the zip>": the zip unpacked into a folder named after it
            archive, _, inner = rel.partition("@")
            rel = os.path.join(archive[:-4] if archive.endswith(".zip") else archive, inner)
        full = os.path.normpath(os.path.join(root, rel))
        if not full.startswith(root.rstrip(os.sep) + os.sep):
            raise UserError(f"{path}:{n}: path {parts[0]!r} escapes the dataset folder {folder_dir}")
        row = [0] * task.classes
        for i in ids:
            row[int(i)] = 1
        items.append((Path(full), tuple(row)))
    if not items:
        raise UserError(f"{path}: no images listed")
    return items


def classes_of(label) -> list[int]:
    """The classes an entry's label names: its class id, or the ones of a multi-hot row."""
    return [i for i, v in enumerate(label) if v] if isinstance(label, tuple) else [label]
