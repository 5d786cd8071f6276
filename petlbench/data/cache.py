"""The on-disk cache of decoded splits, so a sweep decodes each image once in total, not once per run.

An entry (petlbench.data.store: atomic, locked, checksummed, verified on every load) holds `images` (uint8,
N x 3 x H x W) and `labels` (int64, N), read back memory-mapped (processes share the page cache). Its
name carries two hashes: the key (task folder, layout, split, stored size, interpolation, aspect kept or
not) and the source fingerprint (the split file's bytes, then every listed image's relative path, label,
size and mtime_ns). A changed source therefore never matches an old entry; the stale sibling is removed.
Every load also checks the labels against the split file. The checksum is the split's identity for the
runner: a run trained on other data is another run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from petlbench.data import store
from petlbench.errors import UserError
from petlbench.data.layouts import absolute

CACHE_ENV = "PETLBENCH_CACHE"
DEFAULT_CACHE = Path("~/.cache/petlbench/decoded")
FORMAT = 2  # bump when what an entry holds, or how images are decoded, changes (2: checksum, 16-bit/float scaled)


def resolve_cache_dir(value: str | Path | None) -> Path | None:
    """--cache-dir, else $PETLBENCH_CACHE, else ~/.cache/petlbench/decoded; "none" disables the cache."""
    chosen = value if value not in (None, "") else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    if str(chosen).strip().lower() == "none":
        return None
    return Path(os.path.expandvars(str(chosen))).expanduser()


def entry_key(task_dir: Path, layout: str, split: str, size: tuple[int, int], interpolation: str,
              keep_aspect: bool) -> dict:
    return {"format": FORMAT, "task_dir": str(Path(task_dir).resolve()), "layout": layout, "split": split,
            "size": list(size), "interpolation": interpolation, "keep_aspect": bool(keep_aspect)}


def content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """A split's checksum and identity, with or without a cache (petlbench.data.store.digest of both arrays)."""
    return store.digest([np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)])


def fingerprint(split_file: Path | bytes, task_dir: Path, items: list[tuple[Path, int]]) -> str:
    """sha256 of the split file's bytes (or the listing's, layouts.split_bytes) and of (relative path, label,
    size, mtime_ns) of every image.

    `task_dir` as the items were listed (symlinks not resolved), so a linked data root or task folder works.
    """
    h = hashlib.sha256(split_file if isinstance(split_file, bytes) else split_file.read_bytes())
    base = len(str(absolute(task_dir)).rstrip(os.sep)) + 1  # items lie inside it (layouts.inside): slice, not pathlib
    for path, label in items:
        try:
            st = os.stat(path)
        except OSError:
            raise UserError(f"{path}: listed image not found") from None
        h.update(f"\n{str(path)[base:]}\0{label}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def entry_name(key: dict, source: str) -> str:
    """Readable prefix, then the key hash, then the source hash: `<task>-<split>-<HxW>-<interp>-<key>-<src>`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    h, w = key["size"]
    label = f"{Path(key['task_dir']).name}-{key['split']}-{h}x{w}-{key['interpolation']}"
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label + ("-aspect" if key["keep_aspect"] else ""))
    return f"{label}-{digest}-{source[:16]}"


def cached_split(cache_dir: Path, key: dict, task_dir: Path, split_file: Path | bytes, items: list[tuple[Path, int]],
                 decode_into: Callable[[np.ndarray], None]) -> tuple[np.ndarray, np.ndarray, str]:
    """The split's (images, labels, content digest) from a verified entry, decoded into a new one if need be."""
    source = fingerprint(split_file, task_dir, items)
    name = entry_name(key, source)
    labels = np.array([label for _, label in items], dtype=np.int64)
    layout = {"images": (np.dtype(np.uint8), (len(labels), 3, *key["size"])),
              "labels": (np.dtype(np.int64), labels.shape)}

    def fill(arrays):
        decode_into(arrays["images"])
        arrays["labels"][:] = labels

    def same_labels(arrays):
        return None if np.array_equal(arrays["labels"], labels) else "cached labels differ from the labels the split file lists"

    existed = (cache_dir / name).is_dir()
    arrays, digest = store.fetch(cache_dir, name, layout, fill, {**key, "source_sha256": source, "images": len(labels),
                                                                 "refill": "decoding again"},
                                 check=same_labels, what="decoded-image cache")
    if not existed:
        key_part, readable = name.rsplit("-", 1)[0], name.rsplit("-", 2)[0]  # readable: the same for every FORMAT
        store.remove_stale(cache_dir, name, lambda p: p.name.startswith(key_part + "-") or (
            p.name.startswith(readable + "-") and _older_format(p, key)))
    return arrays["images"], arrays["labels"], digest


def _older_format(path: Path, key: dict) -> bool:
    """An entry of this key written by an older petlbench (never read again, so it would only fill the disk)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        return (isinstance(meta.get("format"), int) and meta["format"] < key["format"]
                and all(meta.get(k) == v for k, v in key.items() if k != "format"))
    except (OSError, ValueError, AttributeError):
        return False
