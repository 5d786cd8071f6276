"""The on-disk cache of decoded splits, so a sweep decodes each image once in total, not once per run.

An entry is a folder holding `images.npy` (uint8, N x 3 x H x W), `labels.npy` (int64, N) and
`meta.json`, read back memory-mapped (processes share the page cache). Its name carries two hashes:
the key (task folder, layout, split, stored size, interpolation, aspect kept or not) and the source
fingerprint (the split file's bytes, then every listed image's relative path, label, size and
mtime_ns). A changed source therefore never matches an old entry; the stale sibling is removed.
Entries are written into a temp folder in the cache dir and renamed into place: a killed process
leaves at most a `.tmp-*` folder, which lookups never read.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from petlbench.errors import UserError
from petlbench.layouts import absolute

CACHE_ENV = "PETLBENCH_CACHE"
DEFAULT_CACHE = Path("~/.cache/petlbench/decoded")
FORMAT = 1  # bump when what an entry holds, or how images are decoded, changes
STALE_TMP_S = 24 * 3600  # temp folders older than this are from killed processes


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


def fingerprint(split_file: Path, task_dir: Path, items: list[tuple[Path, int]]) -> str:
    """sha256 of the split file's bytes and of (relative path, label, size, mtime_ns) of every image."""
    h = hashlib.sha256(split_file.read_bytes())
    base = absolute(task_dir)
    for path, label in items:
        try:
            st = path.stat()
        except OSError:
            raise UserError(f"{path}: listed image not found") from None
        h.update(f"\n{path.relative_to(base)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def entry_name(key: dict, source: str) -> str:
    """Readable prefix, then the key hash, then the source hash: `<task>-<split>-<HxW>-<interp>-<key>-<src>`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    h, w = key["size"]
    label = f"{Path(key['task_dir']).name}-{key['split']}-{h}x{w}-{key['interpolation']}"
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label + ("-aspect" if key["keep_aspect"] else ""))
    return f"{label}-{digest}-{source[:16]}"


def cached_split(cache_dir: Path, key: dict, split_file: Path, items: list[tuple[Path, int]],
                 decode_into: Callable[[np.ndarray], None]) -> tuple[np.ndarray, np.ndarray]:
    """The split's (images, labels) from the cache, decoding into a new entry when there is none."""
    source = fingerprint(split_file, Path(key["task_dir"]), items)
    name = entry_name(key, source)
    entry = cache_dir / name
    found = _read(entry, len(items), key["size"])
    if found is not None:
        return found
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir / f".lock-{name.rsplit('-', 1)[0]}", "a")
    except OSError as exc:
        raise _unwritable(cache_dir, exc) from None
    with lock:
        try:  # parallel jobs on one task: the first decodes, the others wait and read its entry
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks: at worst two processes decode the same split
        found = _read(entry, len(items), key["size"])
        return found if found is not None else _write(cache_dir, name, key, source, items, decode_into)


def _write(cache_dir: Path, name: str, key: dict, source: str, items: list[tuple[Path, int]],
           decode_into: Callable[[np.ndarray], None]) -> tuple[np.ndarray, np.ndarray]:
    entry, shape = cache_dir / name, (len(items), 3, *key["size"])
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir))
    except OSError as exc:
        raise _unwritable(cache_dir, exc) from None
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        decode_into(images)  # straight into the file: no second copy of the split in memory
        images.flush()
        del images
        np.save(tmp / "labels.npy", np.array([label for _, label in items], dtype=np.int64))
        (tmp / "meta.json").write_text(json.dumps({**key, "source_sha256": source, "images": len(items),
                                                   "created": time.time()}, indent=2) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        os.rename(tmp, entry)  # atomic; fails if another process renamed the same entry first
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        found = _read(entry, len(items), key["size"])
        if found is not None:  # a concurrent writer won the race with identical content
            return found
        raise _unwritable(cache_dir, exc) from None
    except BaseException:  # unreadable image, Ctrl-C: no half entry stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale(cache_dir, name)
    return _read(entry, len(items), key["size"])


def _read(entry: Path, n: int, size: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The entry's arrays (memory-mapped), or None when it is absent or does not hold what it should."""
    if not entry.is_dir():
        return None
    try:
        images = np.load(entry / "images.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy", mmap_mode="r")
    except (OSError, ValueError):
        images = labels = None
    if (images is None or images.dtype != np.uint8 or images.shape != (n, 3, *size)
            or labels.dtype != np.int64 or labels.shape != (n,)):
        shutil.rmtree(entry, ignore_errors=True)  # damaged (e.g. by hand): decode again
        return None
    return images, labels


def _remove_stale(cache_dir: Path, name: str) -> None:
    """Entries of the same key with another source, and temp folders left by long-dead processes."""
    key_part = name.rsplit("-", 1)[0]
    now = time.time()
    for path in cache_dir.iterdir():
        stale_entry = path.name.startswith(key_part + "-") and path.name != name
        try:
            stale_tmp = path.name.startswith(".tmp-") and now - path.stat().st_mtime > STALE_TMP_S
        except OSError:
            continue
        if stale_entry or stale_tmp:
            shutil.rmtree(path, ignore_errors=True)  # open memory maps of it stay valid (POSIX)


def _unwritable(cache_dir: Path, exc: OSError) -> UserError:
    return UserError(f"{cache_dir}: cannot write the decoded-image cache ({exc.strerror or exc}); "
                     "pass --cache-dir none to run without it")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
