"""`petlbench data download`: fetch a suite's data, unpack it safely, then run the data check.

VTAB-1k comes from the public NOAH-layout mirror on the Hugging Face hub (one vtab-1k.zip); FGVC from
its public mirror of split files and image archives (petlbench.data.fgvc lays it out). --archive
takes local archives instead (the offline route). Archive members that would land outside the target
folder are refused before anything is written.
"""
from __future__ import annotations

import json
import os
import tarfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from petlbench.errors import UserError
from petlbench.data.layouts import absolute, find_task_dir
from petlbench.suite import Suite, load_suite

MIRRORS = {"vtab1k": "XiN0919/VTAB-1k"}  # suite name -> public HF dataset repo in the suite's layout
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def download(suite: str, to: str | Path, repo: str | None = None, archives: list[str] | None = None,
             tasks: list[str] | None = None) -> int:
    """Fetch (or take the given archives), unpack into `to`, find the data root in it, check it."""
    from petlbench.data.check import run_check

    the_suite = load_suite(suite)
    selected = the_suite.select(tasks)
    dest = Path(to).expanduser()
    paths = [Path(a).expanduser() for a in archives or []]
    for path in paths:
        if not path.is_file():
            raise UserError(f"--archive {path}: file not found")
    from petlbench.data.fgvc import download_fgvc, is_split_archive
    if the_suite.layout == "fgvc" and (repo or not paths or any(is_split_archive(p.name) for p in paths)):
        # the mirror's shape: split files and image archives; else (archives of a laid-out tree) as below
        make_folder(dest)
        download_fgvc(selected, dest, repo, paths)
        return run_check(the_suite, dest, [t.name for t in selected])
    if repo and archives:
        raise UserError("--repo and --archive: give one of them (archives are unpacked as they are)")
    if not archives:
        repo = repo or MIRRORS.get(the_suite.name)
        if not repo:
            raise UserError(f"suite {the_suite.name!r}: no public mirror in the {the_suite.layout} layout is known; "
                            "pass --repo OWNER/NAME (a Hugging Face dataset repo) or --archive PATH")
    make_folder(dest)
    if not archives:
        fetch(repo, dest)
        paths = find_archives(dest)
    for path in paths:
        unpack(path, dest)
    root = locate_root(dest, the_suite)
    print(f"data root: {root}  (pass --data-root {root}, or set PETLBENCH_DATA_ROOT)", flush=True)
    return run_check(the_suite, root, tasks)


def make_folder(dest: Path) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--to {dest}: cannot create the folder ({exc.strerror or exc})") from None


def fetch(repo: str, dest: Path) -> None:
    """The repo's files into `dest` through huggingface_hub (resumes; files already there are kept)."""
    from huggingface_hub import snapshot_download

    print(f"fetching the Hugging Face dataset {repo} into {dest} ...", flush=True)
    with hub_errors(repo):
        snapshot_download(repo_id=repo, repo_type="dataset", local_dir=dest)


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


def locate_root(dest: Path, suite: Suite, depth: int = 2) -> Path:
    """The folder under dest (itself, or up to `depth` levels down) holding the most of the suite's tasks."""
    def found(folder: Path) -> int:
        return sum(find_task_dir(folder, task).is_dir() for task in suite.tasks)

    candidates, level = [dest], [dest]
    for _ in range(depth):
        level = [d for f in level for d in sorted(f.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        candidates += level
    best = max(candidates, key=found)  # max keeps the first (shallowest) of equals
    return best if found(best) else dest
