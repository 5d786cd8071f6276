"""Archives and the hub, shared by `data download` and the FGVC mirror: fetch errors as one line, and safe
unpacking (no member or link may land outside the target folder)."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from petlbench.data.layouts import absolute
from petlbench.errors import UserError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@contextmanager
def hub_errors(repo: str):
    """A hub call's failure as one line: no such (or gated) repo, or no network, and what to do instead."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    try:
        yield
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise UserError(f"--repo {repo}: no accessible Hugging Face dataset repo of that name "
                        f"({type(exc).__name__})") from None
    except Exception as exc:  # offline, DNS, proxy, timeouts: httpx and hub errors of many types
        reason = (str(exc).strip().splitlines() or [""])[0].split(": ")[-1].split(". ")[0][:160]
        raise UserError(f"cannot reach the Hugging Face hub for {repo} ({type(exc).__name__}: {reason}); "
                        "download the archives elsewhere and pass each with --archive PATH") from None


def find_archives(folder: Path) -> list[Path]:
    """Archives in a fetched tree (the hub's own .cache folder left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)
                  and ".cache" not in p.relative_to(folder).parts)


MAX_RATIO = 100  # unpacked bytes per archive byte beyond which an archive is refused (JPEGs ~1x, JSON ~10x)
ANY_RATIO_UP_TO = 64 << 20  # this much may be unpacked at any ratio (a small zip of split files)
CHUNK = 1 << 20


def unpack(archive: Path, dest: Path, keep: Callable[[str], bool] | None = None) -> None:
    """Unpack a zip or tar (any compression) into dest; skipped when this very file was unpacked before.

    `keep` (member name -> bool): only the members the layout needs, where that is known. The bytes unpacked
    are bounded before anything is written (the headers' sizes: at most MAX_RATIO times the archive, or
    ANY_RATIO_UP_TO, and no more than the free space) and counted while writing (no more than the headers said).
    """
    stat = archive.stat()
    marker = dest / f".petlbench-unpacked-{archive.name}.json"
    stamp = {"archive": str(absolute(archive)), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if marker.is_file() and marker.read_text() == json.dumps(stamp):
        print(f"{archive}: unpacked before, skipped", flush=True)
        return
    print(f"unpacking {archive} into {dest} ...", flush=True)
    try:
        if zipfile.is_zipfile(archive):
            unpack_zip(archive, dest, keep)
        elif tarfile.is_tarfile(archive):
            unpack_tar(archive, dest, keep)
        else:
            raise UserError(f"{archive}: not a zip or tar archive")
    except tarfile.FilterError as exc:
        raise UserError(f"{archive}: member {exc.tarinfo.name!r} refused ({exc}); nothing outside "
                        f"{dest} is written") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive}: cannot unpack ({exc})") from None
    marker.write_text(json.dumps(stamp))


def unpack_zip(archive: Path, dest: Path, keep: Callable[[str], bool] | None) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():  # every member, kept or not: an archive that reaches out is refused whole
            check_member(archive, info.filename, dest)
        infos = [i for i in zf.infolist() if keep is None or i.is_dir() or keep(i.filename)]
        budget = Budget(archive, dest, sum(i.file_size for i in infos if not i.is_dir()))
        for info in infos:
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as out:
                while chunk := source.read(CHUNK):
                    budget.spend(len(chunk))
                    out.write(chunk)


def unpack_tar(archive: Path, dest: Path, keep: Callable[[str], bool] | None) -> None:
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():  # every member, kept or not: an archive that reaches out is refused whole
            check_member(archive, member.name, dest)
            if member.issym():  # a link's target counts from the link's own folder
                check_member(archive, str(Path(member.name).parent / member.linkname), dest, member.name)
            elif member.islnk():
                check_member(archive, member.linkname, dest, member.name)
        members = [m for m in tf.getmembers() if keep is None or m.isdir() or keep(m.name)]
        budget = Budget(archive, dest, sum(m.size for m in members if m.isfile()))
        for member in members:
            budget.spend(member.size if member.isfile() else 0)  # tar writes exactly the header's size
            tf.extract(member, dest, filter="data")  # links and devices refused too


class Budget:
    """The bytes an archive may unpack: its headers' total, refused up front when that is a bomb's (more than
    MAX_RATIO times the archive beyond ANY_RATIO_UP_TO) or more than the disk's free space; then counted."""

    def __init__(self, archive: Path, dest: Path, declared: int):
        self.archive, self.declared, self.written = archive, declared, 0
        size = archive.stat().st_size
        if declared > max(MAX_RATIO * size, ANY_RATIO_UP_TO):
            raise UserError(f"{archive}: would unpack {declared:,} bytes from {size:,} ({declared / max(size, 1):,.0f}"
                            f" times its size; at most {MAX_RATIO} times beyond {ANY_RATIO_UP_TO >> 20} MB); "
                            "refusing what looks like a zip bomb, nothing was written")
        dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest).free
        if declared > free:
            raise UserError(f"{archive}: would unpack {declared:,} bytes, {dest} has {free:,} free; nothing was "
                            "written")

    def spend(self, count: int) -> None:
        self.written += count
        if self.written > self.declared:
            raise UserError(f"{self.archive}: unpacks to more than its headers say ({self.declared:,} bytes); "
                            "refusing it")


def check_member(archive: Path, name: str, dest: Path, member: str | None = None) -> None:
    """A member path (or a link's target) must stay inside dest: no absolute path, no `..` leading out."""
    base = absolute(dest)
    target = Path(os.path.normpath(base / name.replace("\\", "/")))
    if not target.is_relative_to(base) or name.startswith(("/", "\\")):
        what = f"link {member!r} points" if member else f"member {name!r} would be written"
        raise UserError(f"{archive}: {what} outside {dest}; refusing to unpack")
