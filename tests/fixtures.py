"""Tiny data trees in the two real on-disk layouts, every task of the packaged suites, written in well under a second.

write_vtab_tree: the 19 VTAB-1k task folders in the NOAH layout (train800val200 lists the union of train800 and
val200). write_fgvc_tree: the 5 FGVC datasets in the VPT json layout with their image roots and class ids that are
not contiguous, so the remapping to 0..C-1 is exercised. Both return {task name: FixtureTask} with what was written.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from petlbench.suite import load_suite

VTAB_SIZES = {"train800": 4, "val200": 2, "test": 3}
FGVC_SIZES = {"train": 0, "val": 2, "test": 3}  # train: one image per class at least
# Original class id of the i-th class per FGVC dataset: 1-based (as CUB's and the cars' files are), or with gaps.
FGVC_IDS = {
    "CUB": lambda i: i + 1,
    "nabirds": lambda i: 295 + 3 * i,
    "OxfordFlowers": lambda i: i + 1,
    "StanfordCars": lambda i: 2 * i + 1,
    "StanfordDogs": lambda i: 10 * i,
}


@dataclass
class FixtureTask:
    dir: Path
    splits: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split -> [(path as listed, label)]
    image_root: Path | None = None  # fgvc: where the listed paths start


def colour(index: int, label: int) -> tuple[int, int, int]:
    return ((37 * label + 11 * index) % 256, (91 * label + 5) % 256, (53 * index + 17) % 256)


def jpeg(size: tuple[int, int], rgb: tuple[int, int, int]) -> bytes:
    """A colour with a diagonal ramp on top, so crops and flips of it differ."""
    w, h = size
    ramp = (np.arange(w)[None, :] * 5 + np.arange(h)[:, None] * 3)[..., None]
    pixels = np.clip(np.array(rgb)[None, None, :] * 0.6 + ramp, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


class _Images:
    """A few distinct JPEGs encoded once and reused, so a tree of ~1,300 files is only file writes."""

    def __init__(self, sizes: list[tuple[int, int]], variants: int = 16):
        self.blobs = [jpeg(sizes[v % len(sizes)], colour(v, v * 7)) for v in range(variants)]

    def write(self, path: Path, index: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.blobs[index % len(self.blobs)])


def write_vtab_tree(root: Path, tasks: list[str] | None = None, sizes: dict[str, int] | None = None,
                    image_size: int = 16) -> dict[str, FixtureTask]:
    """<root>/<task>/{train800,val200,train800val200,test}.txt and images/<split>/%06d.jpg, 0-based labels."""
    sizes = dict(VTAB_SIZES if sizes is None else sizes)
    images = _Images([(image_size, image_size)])
    written = {}
    for t, task in enumerate(load_suite("vtab1k").tasks):
        if tasks is not None and task.name not in tasks:
            continue
        folder = Path(root) / task.name
        folder.mkdir(parents=True, exist_ok=True)
        info = FixtureTask(folder)
        for split, n in sizes.items():
            items = []
            for i in range(n):
                rel = f"images/{split}/{i:06d}.jpg"
                images.write(folder / rel, t + i)
                items.append((rel, (i + t) % task.classes))
            info.splits[split] = items
        if "train800" in sizes and "val200" in sizes:
            info.splits["train800val200"] = info.splits["train800"] + info.splits["val200"]
        for split, items in info.splits.items():
            (folder / f"{split}.txt").write_text("".join(f"{rel} {label}\n" for rel, label in items))
        written[task.name] = info
    return written


def write_fgvc_tree(root: Path, tasks: list[str] | None = None, sizes: dict[str, int] | None = None,
                    image_size: int = 16) -> dict[str, FixtureTask]:
    """<root>/<dataset>/{train,val,test}.json, flat {path under the image root: original class id}.

    train lists max(sizes["train"], classes) images, so every class is present; images vary in size.
    """
    sizes = dict(FGVC_SIZES if sizes is None else sizes)
    s = image_size
    images = _Images([(s, s), (s + 5, s - 3), (s - 4, s + 6)])
    written = {}
    for t, task in enumerate(load_suite("fgvc").tasks):
        if tasks is not None and task.name not in tasks:
            continue
        folder = Path(root) / task.name
        image_root = folder / task.images
        info = FixtureTask(folder, image_root=image_root)
        for split, n in sizes.items():
            n = max(n, task.classes) if split == "train" else n
            items = []
            for i in range(n):
                cls = FGVC_IDS[task.name]((i * 7 + t) % task.classes if split != "train" else i % task.classes)
                rel = f"{cls:04d}.class/{split}_{i:05d}.jpg"
                images.write(image_root / rel, i + t)
                items.append((rel, cls))
            info.splits[split] = items
            (folder / f"{split}.json").write_text(json.dumps(dict(items)))
        written[task.name] = info
    return written
