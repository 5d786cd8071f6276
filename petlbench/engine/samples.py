"""Per-sample test outputs of a final run: for every test image its top classes with their softmax
probabilities, and its label, compressed beside the record (`.samples.npz`), so per-class accuracy,
calibration and the agreement of two methods can be read later without running anything again.

They come from the run's one last evaluation, the one that gives `metrics.test_top1`: the reported top-1
is counted from the first of these classes, so the two agree exactly. Written after training ended,
never used for any choice.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from petlbench.backbone import file_sha256
from petlbench.records import replaced_whole

TOP = 5  # classes kept per image
FORMAT = 1  # bump when what the file holds changes
KEYS = ("format", "classes", "probs", "labels", "num_classes", "order")  # what a samples file holds


def samples_path(record_path: Path) -> Path:
    """Beside the record, named after it (a record moved to replaced/ takes it along, as its weights)."""
    return record_path.with_suffix(".samples.npz")


class TopK:
    """Collects each evaluation batch's top-k classes, their probabilities and the labels, in data order.

    `add` returns each image's predicted class: the first of its logits sorted in descending order, stably,
    which is argmax's first maximum; the evaluation counts top-1 from it."""

    def __init__(self, k: int = TOP):
        self.k = k
        self.clear()

    def clear(self) -> None:
        """Start again (the evaluation restarts with a smaller batch after running out of memory)."""
        self.classes, self.probs, self.labels = [], [], []

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        top = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :self.k]
        self.classes.append(top.cpu())
        self.probs.append(torch.softmax(logits, dim=1).gather(1, top).cpu())
        self.labels.append(labels.cpu())
        return top[:, 0]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(classes N x k, probabilities N x k float32, labels N)."""
        if not self.labels:
            return np.zeros((0, self.k), np.int64), np.zeros((0, self.k), np.float32), np.zeros(0, np.int64)
        return (torch.cat(self.classes).numpy(), torch.cat(self.probs).numpy(), torch.cat(self.labels).numpy())


def order_identity(split_files_sha256: dict[str, str], splits: list[str]) -> str:
    """Which images, in which order: the evaluated split files and their sha256 (as the record holds them),
    e.g. "test:1f0c...". Two runs with the same identity scored the same images in the same order."""
    return "+".join(f"{split}:{split_files_sha256.get(split, '?')}" for split in splits)


def write_samples(path: Path, top: TopK, num_classes: int, order: str) -> dict:
    """Write the file atomically (temp file beside it, renamed); what the record says of it."""
    classes, probs, labels = top.arrays()
    index = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
    with replaced_whole(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to a name
            np.savez_compressed(f, format=np.int32(FORMAT), classes=classes.astype(index),
                                probs=probs.astype(np.float16), labels=labels.astype(index),
                                num_classes=np.int32(num_classes), order=np.str_(order))
            f.flush()
            os.fsync(f.fileno())
        sha256 = file_sha256(tmp)
    return {"file": path.name, "sha256": sha256, "top": int(classes.shape[1]), "images": int(len(labels))}
