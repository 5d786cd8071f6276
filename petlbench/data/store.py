"""One verified on-disk store of arrays, under both the decoded-image cache and the feature cache.

An entry is a folder of `.npy` arrays and a `meta.json` that holds their sha256 (`digest`). Entries are
filled in a temp folder and renamed into place (a killed process leaves at most a `.tmp-*` folder,
which lookups never read); one lock file per entry lets parallel jobs wait for the first writer; every
load verifies the checksum (and any check the caller adds), and anything wrong (edited by hand, a disk
error, a zero-byte file, a file in place of the folder) is one warning line and a fresh fill, never an
error on every rerun. Files and folders follow the umask, so a store can be shared.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from petlbench.errors import UserError

Arrays = dict[str, np.ndarray]
Layout = dict[str, tuple[np.dtype, tuple[int, ...]]]  # array name -> dtype, shape (in checksum order)
STALE_TMP_S = 24 * 3600  # temp folders older than this are from killed processes


def digest(arrays: list[np.ndarray]) -> str:
    """sha256 of the arrays' dtypes, shapes and bytes, in order (a split's identity with or without a store).

    sha256, not blake2b: 1.86 vs 0.95 GB/s measured on a memory-mapped entry (CPUs with SHA extensions).
    """
    h = hashlib.sha256((" ".join(f"{a.dtype} {list(a.shape)}" for a in arrays) + "\n").encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")))
    return h.hexdigest()


def fetch(folder: Path, name: str, layout: Layout, fill: Callable[[Arrays], None], meta: dict,
          check: Callable[[Arrays], str | None] | None = None, what: str = "store") -> tuple[Arrays, str]:
    """The entry `name` (arrays memory-mapped, and its checksum), verified; filled by `fill` if absent or damaged."""
    entry = folder / name
    found, _ = read(entry, layout, check)
    if found is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f".lock-{name}", "a")
    except OSError as exc:
        raise unwritable(folder, exc, what) from None
    with lock:
        try:  # parallel jobs on one entry: the first fills it, the others wait and read it
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks: at worst two processes fill the same entry
        found, problem = read(entry, layout, check)
        if found is not None:
            return found
        if problem is not None:
            problem = " ".join(problem.split())  # one line, whatever numpy or json said
            print(f"petlbench: warning: {entry}: {problem}; {meta.get('refill', 'computing it again')}",
                  file=sys.stderr, flush=True)
            discard(entry)
        return write(folder, name, layout, fill, meta, check, what)


def write(folder: Path, name: str, layout: Layout, fill: Callable[[Arrays], None], meta: dict,
          check: Callable[[Arrays], str | None] | None, what: str) -> tuple[Arrays, str]:
    entry = folder / name
    try:  # not tempfile.mkdtemp: its 0700 ignores the umask and locks colleagues sharing the store out
        tmp = folder / f".tmp-{name}-{secrets.token_hex(8)}"
        tmp.mkdir()
    except OSError as exc:
        raise unwritable(folder, exc, what) from None
    try:
        arrays = {key: np.lib.format.open_memmap(tmp / f"{key}.npy", mode="w+", dtype=dtype, shape=shape)
                  for key, (dtype, shape) in layout.items()}
        fill(arrays)  # straight into the files: no second copy in memory
        for array in arrays.values():
            array.flush()
        checksum = digest(list(arrays.values()))
        del arrays
        info = {k: v for k, v in meta.items() if k != "refill"}
        (tmp / "meta.json").write_text(json.dumps({**info, "content_sha256": checksum, "created": time.time()},
                                                  indent=2) + "\n")
        for f in tmp.iterdir():
            fsync(f)
        os.rename(tmp, entry)  # atomic; fails if another process renamed the same entry first
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        found, _ = read(entry, layout, check)
        if found is not None:  # a concurrent writer won the race with identical content
            return found
        raise unwritable(folder, exc, what) from None
    except BaseException:  # an unreadable image, Ctrl-C: no half entry stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {key: np.load(entry / f"{key}.npy", mmap_mode="r") for key in layout}, checksum


def read(entry: Path, layout: Layout, check: Callable[[Arrays], str | None] | None = None
         ) -> tuple[tuple[Arrays, str] | None, str | None]:
    """The entry's arrays and checksum if it holds what it should; else None and what is wrong (None: no entry)."""
    if not os.path.lexists(entry):
        return None, None
    if not entry.is_dir():
        return None, "not a folder"
    try:
        expected = json.loads((entry / "meta.json").read_text())["content_sha256"]
    except FileNotFoundError:
        return None, "meta.json missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"meta.json unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(expected, str):
        return None, "meta.json holds no content checksum"
    arrays = {}
    for key, (dtype, shape) in layout.items():
        try:
            array = np.load(entry / f"{key}.npy", mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            return None, f"{key}.npy unreadable ({exc or type(exc).__name__})"
        if array.dtype != dtype or array.shape != tuple(shape) or not array.flags.c_contiguous:
            return None, f"{key}.npy holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {tuple(shape)}"
        arrays[key] = array
    checksum = digest(list(arrays.values()))
    if checksum != expected:
        return None, "content checksum mismatch (the arrays changed after they were written)"
    problem = check(arrays) if check is not None else None
    return (None, problem) if problem else ((arrays, checksum), None)


def discard(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)  # open memory maps of it stay valid (POSIX)
    else:
        entry.unlink(missing_ok=True)


def remove_stale(folder: Path, keep: str, stale: Callable[[Path], bool]) -> None:
    """Entries `stale` says are superseded by `keep`, and temp folders of long-dead processes."""
    now = time.time()
    for path in folder.iterdir():
        if path.name == keep or path.name.startswith(".lock-"):
            continue
        try:
            old_tmp = path.name.startswith(".tmp-") and now - path.stat().st_mtime > STALE_TMP_S
        except OSError:
            continue
        if old_tmp or (not path.name.startswith(".") and stale(path)):
            discard(path)


def unwritable(folder: Path, exc: OSError, what: str) -> UserError:
    return UserError(f"{folder}: cannot write the {what} ({exc.strerror or exc}); "
                     "pass --cache-dir none to run without it")


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
