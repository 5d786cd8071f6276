"""The on-disk layouts users already have, read into (image path, label) lists.

noah (VTAB-1k as NOAH, FacT, SSF and V-PETL ship it):
    <root>/<task>/<split>.txt, lines "images/<split>/000000.jpg <label>", paths relative to the
    task folder, labels 0-based.
fgvc (as VPT ships CUB, NABirds, Oxford Flowers, Stanford Dogs and Cars):
    <root>/<task>/<split>.json, a flat {"<path relative to the image root>": <class id>}; class ids
    are remapped to 0..C-1 by sorting the ids found in all of the task's split files.
domainbed (DomainBed's PACS, OfficeHome, TerraIncognita): <root>/<dataset>/<domain>/<class>/<image>, no split
    files; a task holds out one domain (petlbench.data.domains).
coop (CoOp's DATA.md, the few-shot papers' 11 datasets):
    <root>/<task>/split_zhou_<Name>.json, {"train"|"val"|"test": [["<path relative to the image root>", <label>,
    "<class name>"], ...]}, labels 0-based as written; one file holds every split.
Every path must stay inside the task folder, every label inside [0, classes). Split files are UTF-8 (a BOM at
the start is fine); a label is ASCII digits with at most one leading minus.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from petlbench.data import domains
from petlbench.errors import UserError
from petlbench.specs import LAYOUT_SPLITS, Task

LABEL = re.compile(r"-?[0-9]+")  # not str.isdigit: it (and int()) also accept '²', '٣' or '１'


def find_task_dir(data_root: Path, task: Task) -> Path:
    """The task's folder under the data root, under its name or any alias (e.g. cifar100, CUB_200_2011); a
    domainbed task's is its dataset's folder."""
    if task.dataset:
        return domains.dataset_dir(data_root, task)
    for name in (task.name, *task.aliases):
        if (data_root / name).is_dir():
            return data_root / name
    return data_root / task.name


def list_images(layout: str, task_dir: Path, task: Task, split: str,
                split_names: Sequence[str] | None = None) -> list[tuple[Path, int]]:
    """The (image, label) entries of one split file. `split_names`: every split file of the suite (FGVC numbers
    its class ids over all of them); default the layout's (fgvc: train, val, test)."""
    if layout == "domainbed":
        return domains.read_split(task_dir, task, split)
    if not task_dir.is_dir():
        names = " or ".join(repr(n) for n in (task.name, *task.aliases))
        raise UserError(f"{task_dir}: task folder not found (looked for {names} under {task_dir.parent})")
    items = (read_noah_split(task_dir, split, task.classes) if layout == "noah"
             else read_coop_split(task_dir, split, task) if layout == "coop"
             else read_fgvc_split(task_dir, split, task, split_names))
    if not items:
        raise UserError(f"{split_file(layout, task_dir, split)}: no images listed")
    return items


def split_file(layout: str, task_dir: Path, split: str) -> Path:
    """The file listing a split: <split>.txt (noah), <split>.json (fgvc), split_zhou_<Name>.json (coop: all splits)."""
    if layout == "coop":
        found = coop_file(task_dir)
        aircraft = task_dir / f"images_variant_{split}.txt"
        return aircraft if not found.is_file() and (task_dir / "variants.txt").is_file() else found
    return task_dir / f"{split}.{'txt' if layout == 'noah' else 'json'}"


def split_bytes(layout: str, task_dir: Path, task: Task, split: str) -> bytes:
    """What defines a split's listing: its split file's bytes (OSError if unreadable), or the domainbed layout's
    listing text (petlbench.data.domains.listing)."""
    if layout == "domainbed":
        return domains.listing(task_dir, task, split)
    return split_file(layout, task_dir, split).read_bytes()


def split_sha256(layout: str, task_dir: Path, task: Task, split: str) -> str:
    """sha256 of split_bytes: a split file's file_sha256."""
    return hashlib.sha256(split_bytes(layout, task_dir, task, split)).hexdigest()


def read_text(path: Path) -> str:
    """A split file's text: UTF-8, a BOM at the start dropped (Windows editors write one); else file and line."""
    if not path.is_file():
        raise UserError(f"{path}: split file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the split file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the split file as UTF-8"
                        ) from None


def read_noah_split(task_dir: Path, split: str, num_classes: int) -> list[tuple[Path, int]]:
    return [(path, label) for _, _, path, label in noah_entries(task_dir, split, num_classes)]


def noah_entries(task_dir: Path, split: str, num_classes: int) -> list[tuple[int, str, Path, int]]:
    """(line number, path as written, path, label) of every non-blank line of a NOAH split file, checked."""
    list_file = split_file("noah", task_dir, split)
    entries = []
    for lineno, line in enumerate(read_text(list_file).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not LABEL.fullmatch(parts[1]):
            raise UserError(f"{list_file}:{lineno}: expected '<relative image path> <int label>', got {line!r}")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise UserError(f"{list_file}:{lineno}: label {label} outside [0, {num_classes})")
        entries.append((lineno, parts[0], inside(task_dir, task_dir, parts[0], f"{list_file}:{lineno}"), label))
    return entries


class _Pairs(list):
    """A JSON object as its (key, value) pairs in file order: json.loads would silently drop repeated keys."""


def fgvc_pairs(json_file: Path) -> list[tuple[str, Any]]:
    """The (relative path, class id) entries of an FGVC split file, in order, repeats kept; ids checked."""
    try:
        data = json.loads(read_text(json_file), object_pairs_hook=_Pairs)
    except ValueError as exc:
        raise UserError(f"{json_file}: not valid JSON ({exc})") from None
    if not isinstance(data, _Pairs):
        raise UserError(f"{json_file}: expected a flat {{\"relative/path.jpg\": class_id}} mapping")
    for rel, label in data:
        if not isinstance(label, int) or isinstance(label, bool):
            raise UserError(f"{json_file}: entry {rel!r}: class id must be an integer, got {label!r}")
    return data


def read_fgvc_json(json_file: Path) -> dict[str, int]:
    return dict(fgvc_pairs(json_file))


def split_duplicates(layout: str, task_dir: Path, task: Task, split: str) -> list[str]:
    """One line per image listed again in the same split file (paths compared after `./` and `..` are folded)."""
    if layout == "domainbed":
        return []  # listed from folders: an image cannot be listed twice
    listed = split_file(layout, task_dir, split)
    if layout == "noah":
        entries = [(f"{listed}:{n}", rel, path, n) for n, rel, path, _ in noah_entries(task_dir, split, task.classes)]
    elif layout == "coop":
        entries = [(f"{listed} [{split!r}]", rel, inside(task_dir, task_dir / task.images, rel, str(listed)), n)
                   for n, (rel, _, _) in enumerate(coop_entries(task_dir, split, task.classes), 1)]
    else:
        root = task_dir / task.images
        entries = [(str(listed), rel, inside(task_dir, root, rel, str(listed)), n)
                   for n, (rel, _) in enumerate(fgvc_pairs(listed), 1)]
    unit = "lines" if layout == "noah" else "entries"
    first, problems = {}, []
    for where, rel, path, n in entries:
        if path in first:
            problems.append(f"{where}: image {rel!r} listed twice in one split ({unit} {first[path]} and {n})")
        first.setdefault(path, n)
    return problems


def fgvc_class_ids(task_dir: Path, task: Task, split_names: Sequence[str] | None = None) -> dict[int, int]:
    """Original class id -> contiguous label, from the ids of the task's split files (sorted): the suite's
    `split_names` (default the layout's train, val, test) that exist. No other JSON in the folder is read: a
    macOS `._train.json` or a `classes.json` beside them is not a split file."""
    names = split_names or [s for role in LAYOUT_SPLITS["fgvc"].values() for s in role]
    files = [f for f in dict.fromkeys(split_file("fgvc", task_dir, s) for s in names) if f.is_file()]
    ids = set()
    for json_file in files:
        ids.update(read_fgvc_json(json_file).values())
    if len(ids) != task.classes:
        raise UserError(f"{task_dir}: the split files ({', '.join(sorted(f.name for f in files))}) hold {len(ids)} "
                        f"distinct class ids, expected {task.classes}")
    return {cid: i for i, cid in enumerate(sorted(ids))}


def read_fgvc_split(task_dir: Path, split: str, task: Task,
                    split_names: Sequence[str] | None = None) -> list[tuple[Path, int]]:
    json_file = split_file("fgvc", task_dir, split)
    data = read_fgvc_json(json_file)
    remap = fgvc_class_ids(task_dir, task, [*(split_names or []), split] if split_names else None)
    root = task_dir / task.images
    return [(inside(task_dir, root, rel, str(json_file)), remap[cid]) for rel, cid in data.items()]


COOP_SPLITS = "split_zhou_*.json"


def coop_file(task_dir: Path) -> Path:
    """The task's one split_zhou_<Name>.json (CoOp writes one per dataset; a second would be ambiguous)."""
    found = sorted(p for p in task_dir.glob(COOP_SPLITS) if not p.name.startswith("."))
    if len(found) > 1:
        raise UserError(f"{task_dir}: several split files ({', '.join(p.name for p in found)}); keep the one CoOp's "
                        "code reads for this dataset")
    return found[0] if found else task_dir / "split_zhou_<Name>.json"


def coop_entries(task_dir: Path, split: str, classes: int) -> list[tuple[str, int, str]]:
    """(relative path, label, class name) of one split of a CoOp split file, checked. FGVCAircraft has none in
    CoOp: its official lists are read as CoOp does (variants.txt numbers the classes, images_variant_<split>.txt
    lists `<image id> <variant>`, the images under images/)."""
    path = coop_file(task_dir)
    if not path.is_file() and (task_dir / "variants.txt").is_file():
        return aircraft_entries(task_dir, split, classes)
    if not path.is_file():
        raise UserError(f"{task_dir}: no {COOP_SPLITS} split file (CoOp's DATA.md: one per dataset; FGVCAircraft: "
                        "variants.txt and images_variant_<split>.txt)")
    try:
        data = json.loads(read_text(path))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get(split), list):
        raise UserError(f"{path}: expected a mapping with a list under {split!r} (train, val, test)")
    out = []
    for n, entry in enumerate(data[split]):
        ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[2], str)
        label = entry[1] if ok else None
        if not ok or not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < classes:
            raise UserError(f"{path}: {split}[{n}]: expected [\"relative/path.jpg\", label in [0, {classes}), "
                            f"\"class name\"], got {entry!r}")
        out.append((entry[0], label, entry[2]))
    return out


def aircraft_entries(task_dir: Path, split: str, classes: int) -> list[tuple[str, int, str]]:
    names = [line.strip() for line in read_text(task_dir / "variants.txt").splitlines() if line.strip()]
    if len(names) != classes:
        raise UserError(f"{task_dir / 'variants.txt'}: {len(names)} variants, expected {classes}")
    label = {name: i for i, name in enumerate(names)}
    listed = task_dir / f"images_variant_{split}.txt"
    out = []
    for n, line in enumerate(read_text(listed).splitlines(), 1):
        image, _, variant = line.strip().partition(" ")
        if not line.strip():
            continue
        if variant not in label:
            raise UserError(f"{listed}:{n}: variant {variant!r} is not in variants.txt")
        out.append((f"images/{image}.jpg", label[variant], variant))
    return out


def read_coop_split(task_dir: Path, split: str, task: Task) -> list[tuple[Path, int]]:
    where = str(coop_file(task_dir))
    return [(inside(task_dir, task_dir / task.images, rel, where), label)
            for rel, label, _ in coop_entries(task_dir, split, task.classes)]


def inside(task_dir: Path, base: Path, rel: str, where: str) -> Path:
    """`base / rel`, made absolute; an error if `..` or an absolute path leaves the task folder.

    Normalised without following symlinks: a split file must not reach out, but an image folder
    that is a symlink to another disk is the user's business.
    """
    root = os.path.normpath(os.path.abspath(task_dir))  # strings: a split lists thousands of paths
    path = os.path.normpath(os.path.join(os.path.abspath(base), rel))
    if not (path == root or path.startswith(root.rstrip(os.sep) + os.sep)):
        raise UserError(f"{where}: path {rel!r} escapes the task folder {task_dir}")
    return Path(path)


def absolute(path: Path) -> Path:
    """An absolute, normalised path (`..` folded) without resolving symlinks."""
    return Path(os.path.normpath(Path(path).absolute()))
