"""`petlbench data download`: fetch a suite's data, unpack it safely, then run the data check.

VTAB-1k comes from the public NOAH-layout mirror on the Hugging Face hub (one vtab-1k.zip); FGVC from
its public mirror of split files and image archives (petlbench.data.fgvc lays it out); PACS and OfficeHome from
DomainBed's copies (petlbench.data.domain_download). --archive
takes local archives instead (the offline route). Archive members that would land outside the target
folder are refused before anything is written.
"""
from __future__ import annotations

from pathlib import Path

from petlbench.data.archives import find_archives, hub_errors, unpack
from petlbench.data.domain_download import download_domains
from petlbench.data.fgvc import download_fgvc, is_split_archive
from petlbench.data.layouts import find_task_dir
from petlbench.errors import UserError
from petlbench.suite import Suite, load_suite

MIRRORS = {"vtab1k": "XiN0919/VTAB-1k"}  # suite name -> public HF dataset repo in the suite's layout


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
    if the_suite.layout == "domainbed":  # DomainBed's sources (petlbench.data.domain_download)
        download_domains(the_suite.name, selected, dest, paths, repo)
        return run_check(the_suite, dest, tasks)
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
