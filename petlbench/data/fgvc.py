"""FGVC from its public mirror (the Hugging Face dataset XiN0919/FGVC, used by V-PETL Bench) or local archives,
laid out as the `fgvc` suite reads it: <to>/<dataset>/{train,val,test}.json beside the dataset's image root.

The mirror's files are listed through huggingface_hub, not assumed: an archive whose name holds "json" or
"split" carries the VPT split files (a folder per dataset), and an image archive is matched to a dataset by
its official name (CUB_200_2011.tgz, car_ims.tgz, ...) or by the dataset's name in it. Each archive is
unpacked safely (petlbench.data.archives.unpack, its expansion bounded) into a staging folder, only the
members the layout needs (split files; the images they list), then the folder that holds the split files'
images is found by looking for the first listed image, so the archive's own nesting does not matter; the
staging folder is removed after. Downloads resume (huggingface_hub); a dataset laid out before is kept and
its archives are not unpacked again.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from petlbench.data.archives import ARCHIVE_SUFFIXES, hub_errors, unpack
from petlbench.errors import UserError
from petlbench.data.layouts import read_fgvc_json
from petlbench.specs import Task

MIRROR = "XiN0919/FGVC"
SPLIT_FILES = ("train.json", "val.json", "test.json")


@dataclass(frozen=True)
class Official:
    archive: str  # the file name the dataset's own site gives its images
    url: str


OFFICIAL = {
    "CUB": Official("CUB_200_2011.tgz", "https://data.caltech.edu/records/65de6-vp158"),
    "nabirds": Official("nabirds.tar.gz", "https://dl.allaboutbirds.org/nabirds"),
    "OxfordFlowers": Official("102flowers.tgz", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    "StanfordDogs": Official("images.tar", "http://vision.stanford.edu/aditya86/ImageNetDogs/"),
    "StanfordCars": Official("car_ims.tgz", "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"),
}


def squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def names_of(task: Task) -> set[str]:
    """The dataset's names as they appear in folder and archive names (VPT's OxfordFlower, Stanford-cars, ...)."""
    return {squash(n) for n in (task.name, *task.aliases)}


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_split_archive(name: str) -> bool:
    return is_archive(name) and bool(re.search(r"json|split", Path(name).name, re.I))


def archive_task(name: str, tasks: list[Task]) -> Task | None:
    """The dataset an image archive holds: its official file name, else a dataset name inside the file name."""
    base = Path(name).name
    stem = squash(re.sub(r"(\.tar)?\.[a-z0-9]+$", "", base, flags=re.I))
    for task in tasks:
        official = OFFICIAL.get(task.name)
        if (official and base.lower() == official.archive.lower()) or stem in names_of(task):
            return task
    return None


def plan_files(files: list[str], tasks: list[Task]) -> tuple[list[str], dict[str, list[str]]]:
    """From a listing: the split archives, and the image archives per wanted dataset."""
    splits = [f for f in files if is_split_archive(f)]
    images = {t.name: [] for t in tasks}
    for f in files:
        if is_archive(f) and not is_split_archive(f):
            task = archive_task(f, tasks)
            if task is not None:
                images[task.name].append(f)
    return splits, images


def list_mirror(repo: str) -> list[str]:
    from huggingface_hub import HfApi
    with hub_errors(repo):
        return HfApi().list_repo_files(repo, repo_type="dataset")


def fetch_files(repo: str, files: list[str], dest: Path) -> list[Path]:
    """Each file into dest/.download (resumed when interrupted; kept when complete)."""
    from huggingface_hub import hf_hub_download
    paths = []
    for name in files:
        print(f"fetching {repo}/{name} ...", flush=True)
        with hub_errors(repo):
            paths.append(Path(hf_hub_download(repo, name, repo_type="dataset", local_dir=dest / ".download")))
    return paths


def download_fgvc(tasks: list[Task], dest: Path, repo: str | None, archives: list[Path]) -> None:
    """Fetch split and image archives for `tasks` from the mirror (unless only --archive is given) plus the given
    archives, unpack them and lay each dataset out under dest."""
    local = {str(a): a for a in archives}
    mirror = [] if archives and not repo else list_mirror(repo or MIRROR)
    source = " and ".join(filter(None, [repo or (MIRROR if mirror else None), "--archive" if archives else None]))
    splits, images = plan_files(mirror + list(local), tasks)
    if not splits:
        raise UserError(f"{source}: no archive of split files (a name holding 'json' or 'split', e.g. json.zip); "
                        "pass it with --archive")
    for task in tasks:
        given = [f for f in images[task.name] if f in local]
        images[task.name] = given or images[task.name]  # a dataset's --archive replaces the mirror's
        if not images[task.name]:
            o = OFFICIAL.get(task.name)
            print(f"{task.name}: no image archive in {source}; get {o.archive if o else 'its images'} from "
                  f"{o.url if o else 'the dataset site'} and pass it with --archive PATH", flush=True)
    wanted = [splits[-1]] + [f for t in tasks for f in images[t.name]]  # a given split archive (listed last) wins
    remote = [f for f in wanted if f not in local]
    paths = dict(zip(remote, fetch_files(repo or MIRROR, remote, dest))) if remote else {}
    paths.update({f: local[f] for f in wanted if f in local})
    stage = dest / ".unpacked"
    try:
        split_dir = stage / squash(Path(splits[-1]).name)
        unpack(paths[splits[-1]], split_dir, keep=lambda name: PurePosixPath(name).name in SPLIT_FILES)
        for task in tasks:
            if not images[task.name]:
                continue
            jsons = find_split_folder(split_dir, task)
            if laid_out(task, jsons, dest / task.name):
                continue
            needed = listed_images(task, jsons)
            trees = []
            for name in images[task.name]:
                trees.append(stage / squash(Path(name).name))
                unpack(paths[name], trees[-1], keep=lambda member: is_listed(member, needed))
            lay_out(task, jsons, trees, dest / task.name)
    finally:  # what the layout took was moved out; the rest (READMEs, unlisted files, other datasets) goes
        shutil.rmtree(stage, ignore_errors=True)


def listed_images(task: Task, jsons: Path) -> set[str]:
    """'<image root>/<path>' of every image the task's split files list: all the layout takes from an archive."""
    root = PurePosixPath(task.images)
    return {str(root / rel) for name in SPLIT_FILES for rel in read_fgvc_json(jsons / name)}


def is_listed(member: str, needed: set[str]) -> bool:
    """Does an archive member end in a listed '<image root>/<path>' (under whatever folders the archive adds)?"""
    parts = [p for p in member.replace("\\", "/").split("/") if p not in ("", ".")]
    return any("/".join(parts[i:]) in needed for i in range(len(parts)))


def laid_out(task: Task, jsons: Path, target: Path) -> bool:
    """Laid out by an earlier download: the split files copied again, the images kept, nothing unpacked."""
    first = next(iter(read_fgvc_json(jsons / "train.json")), None)
    if first is None or not (target / task.images / first).is_file():
        return False
    for name in SPLIT_FILES:
        shutil.copyfile(jsons / name, target / name)
    print(f"{task.name}: laid out before, kept", flush=True)
    return True


def find_split_folder(root: Path, task: Task) -> Path:
    """The unpacked folder holding train/val/test.json for the task, named after the dataset or an alias."""
    wanted = names_of(task)
    for folder in sorted({p.parent for p in root.rglob("train.json")}):
        if squash(folder.name) in wanted and all((folder / f).is_file() for f in SPLIT_FILES):
            return folder
    raise UserError(f"{task.name}: the split archive has no folder named {task.name} (or "
                    f"{', '.join(task.aliases)}) holding {', '.join(SPLIT_FILES)}")


def lay_out(task: Task, jsons: Path, image_trees: list[Path], target: Path) -> None:
    """target/<split>.json, and target/<image root>/... moved from the unpacked image archives."""
    target.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES:
        shutil.copyfile(jsons / name, target / name)
    first = next(iter(read_fgvc_json(target / "train.json")), None)
    if first is None:
        raise UserError(f"{jsons / 'train.json'}: lists no image")
    if (target / task.images / first).is_file():
        print(f"{task.name}: laid out before, kept", flush=True)
        return
    for tree in image_trees:
        base = find_base(tree, task.images, first)
        if base is not None:
            for entry in sorted(base.iterdir()):
                if not entry.name.startswith(".") and not (target / entry.name).exists():  # not unpack's marker
                    shutil.move(str(entry), str(target / entry.name))
            print(f"{task.name}: images from {tree.name} into {target}", flush=True)
            return
    raise UserError(f"{task.name}: no unpacked archive holds {Path(task.images) / first} (the first image of "
                    f"train.json); is it the dataset's image archive?")


def find_base(tree: Path, image_root: str, first: str, depth: int = 3) -> Path | None:
    """The folder B (tree itself or up to `depth` levels down) where B/<image root>/<first image> exists."""
    level = [tree]
    for _ in range(depth + 1):
        for folder in level:
            if (folder / image_root / first).is_file():
                return folder
        level = [d for f in level for d in sorted(f.iterdir()) if d.is_dir()]
    return None
