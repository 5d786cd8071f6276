"""Image data in the layouts users already have, decoded once into uint8 tensors.

NOAH-style VTAB-1k: <root>/<task>/<split>.txt with lines "images/<split>/000000.jpg <label>",
paths relative to the task folder, labels 0-based. Each split is decoded and resized once; batches
are normalised on the device, so no epoch decodes a JPEG again.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from petlbench.errors import UserError

INTERPOLATION = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass
class TensorData:
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N
    mean: torch.Tensor  # 1 x 3 x 1 x 1, in [0, 1] units
    std: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device) -> "TensorData":
        return TensorData(*(t.to(device) for t in (self.images, self.labels, self.mean, self.std)))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx].float().div_(255)
        return (x - self.mean) / self.std, self.labels[idx]


def read_split_file(task_dir: Path, split: str, num_classes: int) -> list[tuple[Path, int]]:
    """Parse <task>/<split>.txt; every path must stay inside the task folder, every label in range."""
    list_file = task_dir / f"{split}.txt"
    if not task_dir.is_dir():
        raise UserError(f"{task_dir}: task folder not found")
    if not list_file.is_file():
        raise UserError(f"{list_file}: split file not found")
    root = task_dir.resolve()
    items = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{list_file}:{lineno}: expected '<relative image path> <int label>', got {line!r}")
        rel, label = parts[0], int(parts[1])
        if not 0 <= label < num_classes:
            raise UserError(f"{list_file}:{lineno}: label {label} outside [0, {num_classes})")
        path = (task_dir / rel).resolve()
        if not path.is_relative_to(root):
            raise UserError(f"{list_file}:{lineno}: path {rel!r} escapes the task folder {task_dir}")
        items.append((path, label))
    if not items:
        raise UserError(f"{list_file}: no images listed")
    return items


def decode(path: Path, size: tuple[int, int], interpolation: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size[1], size[0]), INTERPOLATION[interpolation])
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


def load_split(task_dir: Path, split: str, num_classes: int, prep: dict) -> TensorData:
    """Decode and resize one split of a NOAH-layout task into uint8 tensors."""
    items = read_split_file(task_dir, split, num_classes)
    size = tuple(prep["input_size"][-2:])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL releases the GIL
        arrays = list(pool.map(lambda item: decode(item[0], size, prep["interpolation"]), items))
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    mean = torch.tensor(prep["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return TensorData(images, labels, mean, std)
