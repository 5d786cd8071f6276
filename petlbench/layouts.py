"""The on-disk layouts users already have, read into (image path, label) lists.

noah (VTAB-1k as NOAH, FacT, SSF and V-PETL ship it):
    <root>/<task>/<split>.txt, lines "images/<split>/000000.jpg <label>", paths relative to the
    task folder, labels 0-based.
fgvc (as VPT ships CUB, NABirds, Oxford Flowers, Stanford Dogs and Cars):
    <root>/<task>/<split>.json, a flat {"<path relative to the image root>": <class id>}; class ids
    are remapped to 0..C-1 by sorting the ids found in all of the task's split files.
Every path must stay inside the task folder, every label inside [0, classes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from petlbench.errors import UserError
from petlbench.specs import Task


def find_task_dir(data_root: Path, task: Task) -> Path:
    """The task's folder under the data root, under its name or any alias (e.g. cifar100, CUB_200_2011)."""
    for name in (task.name, *task.aliases):
        if (data_root / name).is_dir():
            return data_root / name
    return data_root / task.name


def list_images(layout: str, task_dir: Path, task: Task, split: str) -> list[tuple[Path, int]]:
    if not task_dir.is_dir():
        names = " or ".join(repr(n) for n in (task.name, *task.aliases))
        raise UserError(f"{task_dir}: task folder not found (looked for {names} under {task_dir.parent})")
    items = read_noah_split(task_dir, split, task.classes) if layout == "noah" else read_fgvc_split(task_dir, split, task)
    if not items:
        raise UserError(f"{split_file(layout, task_dir, split)}: no images listed")
    return items


def split_file(layout: str, task_dir: Path, split: str) -> Path:
    """The file listing a split: <split>.txt (noah) or <split>.json (fgvc)."""
    return task_dir / f"{split}.{'txt' if layout == 'noah' else 'json'}"


def read_noah_split(task_dir: Path, split: str, num_classes: int) -> list[tuple[Path, int]]:
    list_file = split_file("noah", task_dir, split)
    if not list_file.is_file():
        raise UserError(f"{list_file}: split file not found")
    items = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{list_file}:{lineno}: expected '<relative image path> <int label>', got {line!r}")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise UserError(f"{list_file}:{lineno}: label {label} outside [0, {num_classes})")
        items.append((inside(task_dir, task_dir, parts[0], f"{list_file}:{lineno}"), label))
    return items


def read_fgvc_json(json_file: Path) -> dict[str, int]:
    if not json_file.is_file():
        raise UserError(f"{json_file}: split file not found")
    try:
        data = json.loads(json_file.read_text())
    except ValueError as exc:
        raise UserError(f"{json_file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{json_file}: expected a flat {{\"relative/path.jpg\": class_id}} mapping")
    for rel, label in data.items():
        if not isinstance(label, int) or isinstance(label, bool):
            raise UserError(f"{json_file}: entry {rel!r}: class id must be an integer, got {label!r}")
    return data


def fgvc_class_ids(task_dir: Path, task: Task) -> dict[int, int]:
    """Original class id -> contiguous label, from the ids of every split file of the task (sorted)."""
    ids, files = set(), sorted(task_dir.glob("*.json"))
    for json_file in files:
        ids.update(read_fgvc_json(json_file).values())
    if len(ids) != task.classes:
        raise UserError(f"{task_dir}: the split files ({', '.join(f.name for f in files)}) hold {len(ids)} "
                        f"distinct class ids, expected {task.classes}")
    return {cid: i for i, cid in enumerate(sorted(ids))}


def read_fgvc_split(task_dir: Path, split: str, task: Task) -> list[tuple[Path, int]]:
    json_file = split_file("fgvc", task_dir, split)
    data = read_fgvc_json(json_file)
    remap = fgvc_class_ids(task_dir, task)
    root = task_dir / task.images
    return [(inside(task_dir, root, rel, str(json_file)), remap[cid]) for rel, cid in data.items()]


def inside(task_dir: Path, base: Path, rel: str, where: str) -> Path:
    """`base / rel`, made absolute; an error if `..` or an absolute path leaves the task folder.

    Normalised without following symlinks: a split file must not reach out, but an image folder
    that is a symlink to another disk is the user's business.
    """
    path = Path(os.path.normpath(absolute(base) / rel))
    if not path.is_relative_to(absolute(task_dir)):
        raise UserError(f"{where}: path {rel!r} escapes the task folder {task_dir}")
    return path


def absolute(path: Path) -> Path:
    """An absolute, normalised path (`..` folded) without resolving symlinks."""
    return Path(os.path.normpath(Path(path).absolute()))
