"""Archives and the hub, shared by `data download` and the FGVC mirror: fetch errors as one line, and safe
unpacking (no member or link may land outside the target folder)."""
from __future__ import annotations

import json
import os
import tarfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

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


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar (any compression) into dest; skipped when this very file was unpacked before."""
    stat = archive.stat()
    marker = dest / f".petlbench-unpacked-{archive.name}.json"
    stamp = {"archive": str(absolute(archive)), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if marker.is_file() and marker.read_text() == json.dumps(stamp):
        print(f"{archive}: unpacked before, skipped", flush=True)
        return
    print(f"unpacking {archive} into {dest} ...", flush=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    check_member(archive, name, dest)
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    check_member(archive, member.name, dest)
                    if member.issym():  # a link's target counts from the link's own folder
                        check_member(archive, str(Path(member.name).parent / member.linkname), dest, member.name)
                    elif member.islnk():
                        check_member(archive, member.linkname, dest, member.name)
                tf.extractall(dest, members=members, filter="data")  # links and devices refused too
        else:
            raise UserError(f"{archive}: not a zip or tar archive")
    except tarfile.FilterError as exc:
        raise UserError(f"{archive}: member {exc.tarinfo.name!r} refused ({exc}); nothing outside "
                        f"{dest} is written") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive}: cannot unpack ({exc})") from None
    marker.write_text(json.dumps(stamp))


def check_member(archive: Path, name: str, dest: Path, member: str | None = None) -> None:
    """A member path (or a link's target) must stay inside dest: no absolute path, no `..` leading out."""
    base = absolute(dest)
    target = Path(os.path.normpath(base / name.replace("\\", "/")))
    if not target.is_relative_to(base) or name.startswith(("/", "\\")):
        what = f"link {member!r} points" if member else f"member {name!r} would be written"
        raise UserError(f"{archive}: {what} outside {dest}; refusing to unpack")
