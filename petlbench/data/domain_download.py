"""`petlbench data download` for the domainbed suites: DomainBed's own copies, laid out as
<to>/<dataset>/<domain>/<class>/<image>.

PACS and OfficeHome come as one zip each from the Google Drive files DomainBed's download script fetches
(facebookresearch/DomainBed `domainbed/scripts/download.py`), holding `kfold/` and `OfficeHomeDataset_10072016/`;
`--archive PATH` takes that zip from disk instead (the offline route). The archive is fetched to
`<to>/.download/<name>.part` and renamed when complete, unpacked safely (petlbench.data.archives.unpack) into a
staging folder, and the folder holding the dataset's domain folders is renamed into place in one step, so
`<to>/<dataset>` is either whole or absent; the staging folder is removed after. A dataset laid out before is kept.
TerraIncognita has no copy in this layout (DomainBed's script builds it from the Caltech Camera Traps images and
annotations): asking for it is a one-line error naming the source.
"""
from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from petlbench.data.archives import unpack
from petlbench.errors import UserError
from petlbench.specs import Task

DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"


@dataclass(frozen=True)
class Source:
    drive_id: str  # DomainBed's download.py
    archive: str  # the file name DomainBed saves it as
    official: str  # the dataset's own page


SOURCES = {
    "PACS": Source("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS.zip", "https://domaingeneralization.github.io/"),
    "office_home": Source("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "office_home.zip",
                          "https://www.hemanthdv.org/officeHomeDataset.html"),
}
NO_MIRROR = {
    "terra_incognita": "the Caltech Camera Traps images and annotations at https://lila.science/datasets/"
                       "caltech-camera-traps, laid out by facebookresearch/DomainBed domainbed/scripts/download.py "
                       "(download_terra_incognita)",
}


def download_domains(suite_name: str, tasks: list[Task], dest: Path, archives: list[Path], repo: str | None) -> None:
    """Lay out every dataset the tasks hold out a domain of under dest (fetched, or from the given archives)."""
    if repo:
        raise UserError(f"--repo: suite {suite_name!r} is fetched from DomainBed's sources; pass --archive PATH "
                        "for a copy of your own")
    datasets = {t.dataset: t.domains for t in tasks}
    for dataset in datasets:
        if dataset not in SOURCES and not archives:
            where = NO_MIRROR.get(dataset, "its authors' site")
            raise UserError(f"suite {suite_name!r}: no public copy of {dataset} in DomainBed's layout to download; "
                            f"get {where}, then pass --data-root (or an archive of it with --archive PATH)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--to {dest}: cannot create the folder ({exc.strerror or exc})") from None
    for dataset, domains in datasets.items():
        target = dest / dataset
        if target.is_dir():
            missing = [d for d in domains if not (target / d).is_dir()]
            if missing:
                raise UserError(f"{target}: exists but lacks the domain folder {missing[0]!r}; move it away and "
                                "download again")
            print(f"{dataset}: laid out before, kept", flush=True)
            continue
        paths = archives or [fetch(SOURCES[dataset], dest / ".download")]
        stage = dest / ".unpacked" / dataset
        try:
            for path in paths:
                unpack(path, stage)
            found = find_domains(stage, domains)
            if found is None:
                raise UserError(f"{', '.join(str(p) for p in paths)}: no folder in it holds the domain folders "
                                f"{', '.join(domains)} of {dataset}")
            os.replace(found, target)  # one rename: the dataset folder appears whole
            print(f"{dataset}: laid out in {target}", flush=True)
        finally:
            shutil.rmtree(dest / ".unpacked", ignore_errors=True)


def fetch(source: Source, folder: Path) -> Path:
    """The archive into folder/<name>, through <name>.part (renamed when complete; a complete one is kept)."""
    path = folder / source.archive
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    url, part = DRIVE.format(source.drive_id), path.with_name(path.name + ".part")
    print(f"fetching {source.archive} (DomainBed's copy) from {url} ...", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            if response.headers.get("Content-Type", "").startswith("text/html"):  # Drive's quota or warning page
                raise OSError("the server sent a web page, not the archive")
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:  # URLError, timeouts, a full disk
        part.unlink(missing_ok=True)
        raise UserError(f"cannot download {source.archive} from {url} ({exc}); get the dataset from "
                        f"{source.official} and pass its archive with --archive PATH") from None
    os.replace(part, path)
    return path


def find_domains(tree: Path, domains: list[str], depth: int = 3) -> Path | None:
    """The folder (tree itself or up to `depth` levels down) holding every domain folder."""
    level = [tree]
    for _ in range(depth + 1):
        for folder in level:
            if all((folder / d).is_dir() for d in domains):
                return folder
        level = [d for f in level for d in sorted(f.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    return None
