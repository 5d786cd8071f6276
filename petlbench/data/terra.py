"""TerraIncognita in DomainBed's layout, built as DomainBed's download script builds it from the Caltech Camera
Traps release (facebookresearch/DomainBed `domainbed/scripts/download.py`, `download_terra_incognita`):

    terra_incognita/location_<N>/<category>/<file name>

for the images of locations 38, 43, 46 and 100 and, per annotation of an image, its category if it is one of ten
(bird, bobcat, cat, coyote, dog, empty, opossum, rabbit, raccoon, squirrel); an image with two such annotations
of different categories sits in both folders, as DomainBed copies it. Only the images the annotations place are
unpacked from the (large) image archive.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path, PurePosixPath

from petlbench.data.archives import unpack
from petlbench.errors import UserError

LOCATIONS = ("38", "43", "46", "100")
CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")
# the files DomainBed's script fetches (LILA's Caltech Camera Traps)
LILA = "https://lilablobssc.blob.core.windows.net/caltechcameratraps/"
FILES = ((LILA + "eccv_18_all_images_sm.tar.gz", "eccv_18_all_images_sm.tar.gz"),
         (LILA + "labels/caltech_camera_traps.json.zip", "caltech_camera_traps.json.zip"))


def is_labels(archive: Path) -> bool:
    """The annotations' archive (caltech_camera_traps.json.zip) rather than the images'."""
    return "json" in archive.name.lower()


def placements(data: dict) -> dict[str, list[str]]:
    """Image file name -> the `location_<N>/<category>` folders DomainBed puts it in."""
    try:
        names = {c["id"]: c["name"] for c in data["categories"]}
        found = defaultdict(list)
        for a in data["annotations"]:
            found[a["image_id"]].append(names.get(a["category_id"]))
        placed = {}
        for image in data["images"]:
            location = str(image["location"])
            folders = [f"location_{location}/{c}" for c in found[image["id"]] if c in CATEGORIES]
            if location in LOCATIONS and folders:
                placed[image["file_name"]] = list(dict.fromkeys(folders))
    except (KeyError, TypeError) as exc:
        raise UserError(f"the Caltech Camera Traps annotations lack an expected field ({exc})") from None
    return placed


def read_annotations(folder: Path) -> dict:
    """The annotations JSON unpacked into folder (the one holding images, annotations and categories)."""
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
            return data
    raise UserError(f"{folder}: no Caltech Camera Traps annotations (a JSON with images, annotations and "
                    "categories) in the annotations archive")


def build(labels: Path, images: Path, stage: Path) -> Path:
    """Unpack both archives into stage and lay out stage/terra_incognita; returns that folder."""
    unpack(labels, stage / "labels", keep=lambda name: name.lower().endswith(".json"))
    placed = placements(read_annotations(stage / "labels"))
    if not placed:
        raise UserError(f"{labels}: the annotations place no image in locations {', '.join(LOCATIONS)}")
    wanted = {PurePosixPath(f).name for f in placed}
    unpack(images, stage / "images", keep=lambda name: PurePosixPath(name).name in wanted)
    unpacked = {p.name: p for p in (stage / "images").rglob("*") if p.is_file()}
    missing = [f for f in placed if PurePosixPath(f).name not in unpacked]
    if missing:
        raise UserError(f"{images}: {len(missing)} image(s) the annotations place are not in it (first: "
                        f"{missing[0]}); is it eccv_18_all_images_sm.tar.gz?")
    out = stage / "terra_incognita"
    for file_name, folders in placed.items():
        source = unpacked[PurePosixPath(file_name).name]
        for i, folder in enumerate(folders):
            target = out / folder / PurePosixPath(file_name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if i == len(folders) - 1:
                os.replace(source, target)
            else:
                shutil.copyfile(source, target)
    return out
