"""Output places checked before the work and files written whole: an unwritable, missing, full or read-only
output path is one line naming it (exit 2), never a traceback after the work, nor half a file over a good one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from petlbench.errors import UserError
from petlbench.records import replaced_whole

SPARE = 1 << 20  # bytes a probe writes: a disk without 1 MB to spare is full for our purposes


def check_writable(folder: Path, flag: str, what: str) -> None:
    """Make `folder` (parents too) and write a 1 MB probe there, or one line: '<flag> <folder>: cannot write ...'."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".petlbench-write-check-") as probe:
            probe.write(b"\0" * SPARE)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise UserError(f"{flag} {folder}: cannot write {what} there ({exc.strerror or exc})") from None


def check_output_file(path: Path, flag: str, what: str) -> None:
    """A file we are about to write: not a folder, and its folder writable (checked before the work)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; expected the path of the file to write {what} to")
    check_writable(path.parent, flag, what)


@contextlib.contextmanager
def written_whole(path: Path, flag: str, what: str, errors: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that go by it still do); when the block ends
    well it replaces `path` in one rename. Any OSError (or one of `errors`, a library's own write error) removes
    the temporary file and is one line naming `path`: an earlier file there stays whole."""
    path = Path(path)
    check_output_file(path, flag, what)
    try:
        with replaced_whole(path, suffix=f".tmp{path.suffix}") as tmp:
            yield tmp
    except (OSError, *errors) as exc:
        raise UserError(f"{flag} {path}: cannot write {what} ({getattr(exc, 'strerror', None) or exc})") from None
