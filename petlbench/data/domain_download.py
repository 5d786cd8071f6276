"""`petlbench data download` for the domainbed suites: the files DomainBed's download script fetches
(facebookresearch/DomainBed `domainbed/scripts/download.py`), laid out as <to>/<dataset>/<domain>/<class>/<image>.

PACS and OfficeHome come as one zip each from Google Drive, holding `kfold/` and `OfficeHomeDataset_10072016/`;
TerraIncognita is built from LILA's Caltech Camera Traps images and annotations (petlbench.data.terra).
`--archive PATH` takes those files from disk instead (the offline route). A fetched file goes to
`<to>/.download/<name>.part` and is renamed when complete; archives are unpacked safely
(petlbench.data.archives.unpack) into a staging folder, and the folder holding the dataset's domain folders is
renamed into place in one step, so `<to>/<dataset>` is either whole or absent; the staging folder is removed
after. A dataset laid out before is kept.
"""
from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from petlbench.data import terra
from petlbench.data.archives import unpack
from petlbench.errors import UserError
from petlbench.specs import Task

DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"


@dataclass(frozen=True)
class Source:
    files: tuple[tuple[str, str], ...]  # (URL, file name) as DomainBed's download.py fetches them
    official: str  # the dataset's own page


SOURCES = {
    "PACS": Source(((DRIVE.format("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"), "PACS.zip"),),
                   "https://domaingeneralization.github.io/"),
    "office_home": Source(((DRIVE.format("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"), "office_home.zip"),),
                          "https://www.hemanthdv.org/officeHomeDataset.html"),
    "terra_incognita": Source(terra.FILES, "https://lila.science/datasets/caltech-camera-traps"),
}


def download_domains(suite_name: str, tasks: list[Task], dest: Path, archives: list[Path], repo: str | None) -> None:
    """Lay out every dataset the tasks hold out a domain of under dest (fetched, or from the given archives)."""
    if repo:
        raise UserError(f"--repo: suite {suite_name!r} is fetched from DomainBed's sources; pass --archive PATH "
                        "for a copy of your own")
    datasets = {t.dataset: t.domains for t in tasks}
    for dataset in datasets:
        if dataset not in SOURCES and not archives:
            raise UserError(f"suite {suite_name!r}: DomainBed's download script has no source for {dataset!r}; lay "
                            f"it out as <data root>/{dataset}/<domain>/<class>/<image> or pass an archive of it "
                            "with --archive PATH")
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
        paths = archives or [fetch(url, name, SOURCES[dataset].official, dest / ".download")
                             for url, name in SOURCES[dataset].files]
        stage = dest / ".unpacked" / dataset
        try:
            if dataset == "terra_incognita" and any(terra.is_labels(p) for p in paths):  # build, as DomainBed does
                labels = next(p for p in paths if terra.is_labels(p))
                images = [p for p in paths if not terra.is_labels(p)]
                if len(images) != 1:
                    raise UserError("--archive: TerraIncognita is built from two archives, the annotations "
                                    "(caltech_camera_traps.json.zip) and the images (eccv_18_all_images_sm.tar.gz)")
                terra.build(labels, images[0], stage)
            else:
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


def fetch(url: str, name: str, official: str, folder: Path) -> Path:
    """The file at url into folder/name, through name.part (renamed when complete; a complete one is kept)."""
    path = folder / name
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    print(f"fetching {name} (DomainBed's source) from {url} ...", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            if response.headers.get("Content-Type", "").startswith("text/html"):  # Drive's quota or warning page
                raise OSError("the server sent a web page, not the file")
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:  # URLError, timeouts, a full disk
        part.unlink(missing_ok=True)
        raise UserError(f"cannot download {name} from {url} ({exc}); get the dataset from {official} "
                        "and pass its archive(s) with --archive PATH") from None
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
