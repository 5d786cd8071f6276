"""Images decoded once into uint8 tensors, cropped, flipped and normalised on the device per batch.

No epoch decodes a JPEG again: a split is decoded and resized once (and kept in the on-disk cache),
then lives as one uint8 tensor, on the GPU when there is one.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from petlbench.data.cache import cached_split, content_digest, entry_key
from petlbench.errors import UserError
from petlbench.data.layouts import find_task_dir, list_images, split_bytes, split_file
from petlbench.specs import INTERPOLATIONS

INTERPOLATION = {name: getattr(Image, name.upper()) for name in INTERPOLATIONS}


@dataclass
class TensorData:
    images: torch.Tensor  # uint8, N x 3 x H x W (H, W >= crop)
    labels: torch.Tensor  # int64, N
    mean: torch.Tensor  # 1 x 3 x 1 x 1, in [0, 1] units
    std: torch.Tensor
    crop: tuple[int, int] | None = None  # model input size when the stored images are larger
    augment: str = "none"  # "random_crop_flip" for training; else a centre crop to `crop`
    digest: str | None = None  # sha256 of the splits' content digests, in order: the data's part of a run's identity

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        """Where batches come out (the images may stay in host memory when the device is too small)."""
        return self.mean.device

    def to(self, device: torch.device) -> "TensorData":
        """Move everything to `device`; images that do not fit there stay in host memory, batches move."""
        small = replace(self, labels=self.labels.to(device), mean=self.mean.to(device), std=self.std.to(device))
        try:
            return replace(small, images=self.images.to(device))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return small

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
        if self.augment == "random_crop_flip":
            x = random_crop_flip(x, self.crop or tuple(x.shape[-2:]), generator)
        elif self.crop and tuple(x.shape[-2:]) != tuple(self.crop):
            x = center_crop(x, self.crop)
        x = x.float().div_(255)
        return (x - self.mean) / self.std, self.labels[idx]


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top: top + size[0], left: left + size[1]]


def random_crop_flip(x: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
    """A random `size` crop and a coin-flip horizontal mirror per image, as one gather on the device."""
    n, (h, w) = x.shape[0], x.shape[-2:]
    top = torch.randint(0, h - size[0] + 1, (n, 1), generator=generator).to(x.device)
    left = torch.randint(0, w - size[1] + 1, (n, 1), generator=generator).to(x.device)
    flip = (torch.rand(n, 1, generator=generator) < 0.5).to(x.device)
    rows = top + torch.arange(size[0], device=x.device)
    cols = left + torch.arange(size[1], device=x.device)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def stored_size(prep: dict) -> tuple[int, int]:
    """The size a split is decoded to: the input size, or input / crop_pct (224 -> 256) when cropping."""
    h, w = prep["input_size"][-2:]
    pct = prep.get("crop_pct", 1.0)
    return (h, w) if pct >= 1.0 else (round(h / pct), round(w / pct))


def to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB. PIL's convert clips: a 16-bit PNG comes out white, a [0, 1] float TIFF black; these are scaled."""
    if im.mode == "F" or im.mode.startswith("I"):  # F, I (32-bit), I;16, I;16B, I;16L, I;16N
        a = np.asarray(im)
        lo, hi, expected = (0, 1, "[0, 1]") if im.mode == "F" else (0, 65535, "[0, 65535] (16 bits)")
        if not (a.size and np.isfinite(a).all() and lo <= a.min() and a.max() <= hi):
            found = f"[{a.min():g}, {a.max():g}]" if a.size and np.isfinite(a).all() else "NaN or infinity"
            raise UserError(f"{path}: cannot scale mode {im.mode!r} pixels to 8 bits: values {found}, expected "
                            f"{expected}; save it as an 8-bit image")
        grey = np.round(a * 255) if im.mode == "F" else (a.astype(np.uint32) + 128) // 257
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")  # 1, L, P, RGB(A/X), LA, PA, CMYK, YCbCr, ...


class Opened(NamedTuple):
    image: Image.Image  # 8-bit RGB
    format: str | None  # the file's format as PIL names it (JPEG, PNG, ...)
    size: tuple[int, int]  # the file's full (width, height), before any draft


def open_rgb(path: Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """The image as 8-bit RGB; the one decode `run` and `data check` share, so they refuse the same files.

    `draft` (data check) lets JPEGs decode at reduced scale; every block is still read.
    """
    return open_image(path, draft).image


def open_image(path: Path, draft: tuple[int, int] | None = None) -> Opened:
    """open_rgb, with the file's format and full size (data check compares a JPEG's draft only with JPEGs)."""
    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
            if draft:
                im.draft("RGB", draft)
            im.load()
            return Opened(to_rgb(im, path), fmt, size)
    except UserError:
        raise
    except Exception as exc:  # OSError, SyntaxError, struct.error, DecompressionBombError (not an OSError), ...
        raise UserError(f"{path}: unreadable image ({exc})") from None


def decode(path: Path, size: tuple[int, int], interpolation: str, keep_aspect: bool) -> np.ndarray:
    """Resize straight to `size` (VTAB), or the shorter side to size then a centre square (FGVC)."""
    im = open_rgb(path)
    if keep_aspect:
        scale = max(size[0] / im.height, size[1] / im.width)
        im = im.resize((max(size[1], round(im.width * scale)), max(size[0], round(im.height * scale))),
                       INTERPOLATION[interpolation])
        left, top = (im.width - size[1]) // 2, (im.height - size[0]) // 2
        im = im.crop((left, top, left + size[1], top + size[0]))
    elif im.size != (size[1], size[0]):  # already the input size (VTAB's 224 files, the demo's 32): no resampling
        im = im.resize((size[1], size[0]), INTERPOLATION[interpolation])
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def decode_all(items: list[tuple[Path, int]], prep: dict,
               out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every listed image into `out` (e.g. a memory-mapped cache file), or into a new array."""
    size, keep = stored_size(prep), prep.get("crop_pct", 1.0) < 1.0
    if prep["interpolation"] not in INTERPOLATION:
        raise UserError(f"interpolation: expected one of {', '.join(INTERPOLATION)}, got {prep['interpolation']!r}")
    out = np.empty((len(items), 3, *size), dtype=np.uint8) if out is None else out

    def some(indices: range) -> None:
        for i in indices:
            out[i] = decode(items[i][0], size, prep["interpolation"], keep)

    workers = torch.get_num_threads()  # our share of the cores; PIL releases the GIL while it decodes
    step = max(1, math.ceil(len(items) / (4 * workers)))  # a few chunks per thread: not one future per image
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(some, (range(i, min(i + step, len(items))) for i in range(0, len(items), step))))
    return out, np.array([label for _, label in items], dtype=np.int64)


def load_images(layout: str, task_dir: Path, task, splits: list[str], prep: dict, train: bool = False,
                cache_dir: Path | None = None, split_names: list[str] | None = None) -> TensorData:
    """The images of `splits` (concatenated, e.g. FGVC's train + val) as one TensorData; `split_names`: every
    split file of the suite (layouts.list_images)."""
    parts = [load_split_arrays(layout, task_dir, task, split, prep, cache_dir, split_names) for split in splits]
    if len(parts) == 1:  # keep a cached split memory-mapped; batches index it, nothing writes to it
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images, labels = torch.from_numpy(parts[0].images), torch.from_numpy(np.array(parts[0].labels))
    else:
        images = torch.from_numpy(np.concatenate([p.images for p in parts]))
        labels = torch.from_numpy(np.concatenate([p.labels for p in parts]))
    digest = hashlib.sha256(" ".join(p.digest for p in parts).encode()).hexdigest()
    mean = torch.tensor(prep["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], dtype=torch.float32).view(1, 3, 1, 1)
    crop = tuple(prep["input_size"][-2:])
    augment = prep.get("train_augment", "none") if train else "none"
    return TensorData(images, labels, mean, std, crop=crop, augment=augment, digest=digest)


class SplitArrays(NamedTuple):
    images: np.ndarray  # uint8, N x 3 x H x W
    labels: np.ndarray  # int64, N
    digest: str  # cache.content_digest of both: the cache entry's verified checksum, or computed after decoding


def load_split_arrays(layout: str, task_dir: Path, task, split: str, prep: dict,
                      cache_dir: Path | None = None, split_names: list[str] | None = None) -> SplitArrays:
    """Decoded uint8 images and labels of one split file, from the on-disk cache when there is one."""
    items = list_images(layout, task_dir, task, split, split_names)
    if cache_dir is None:
        images, labels = decode_all(items, prep)
        return SplitArrays(images, labels, content_digest(images, labels))
    named = f"{task.name}.{split}" if layout == "domainbed" else split  # a dataset folder holds several tasks
    key = entry_key(task_dir, layout, named, stored_size(prep), prep["interpolation"], prep.get("crop_pct", 1.0) < 1.0)
    listing = split_bytes(layout, task_dir, task, split) if layout == "domainbed" else split_file(layout, task_dir, split)
    return SplitArrays(*cached_split(Path(cache_dir), key, task_dir, listing, items,
                                     lambda out: decode_all(items, prep, out)))


class SplitCache:
    """Keeps the decoded splits of the current task in memory across its methods, seeds and grid."""

    def __init__(self, cache_dir: Path | None = None):
        self.cache_dir, self.task, self.data = cache_dir, None, {}

    def get(self, plan, splits: list[str], prep: dict, train: bool) -> TensorData:
        task_dir = find_task_dir(plan.data_root, plan.task)
        if (task_dir, plan.task.name) != self.task:  # domainbed: one dataset folder, a task per held-out domain
            self.task, self.data = (task_dir, plan.task.name), {}
        key = (tuple(splits), repr(sorted(prep.items())), train)
        if key not in self.data:
            self.data[key] = load_images(plan.suite.layout, task_dir, plan.task, splits, prep, train, self.cache_dir,
                                         plan.suite.split_names())
        return self.data[key]
