"""The feature cache: when everything that trains sits after the frozen backbone (the linear probe), each
image's features are computed once per backbone, weights, preprocessing and data, kept in the verified
store (petlbench.data.store) and the head trains on them: the same batches in the same order as training the
whole model, so the same result up to float rounding, without running the backbone every epoch.

It applies only when the frozen part computes the same thing in training as in evaluation: no trainable
tensor or method buffer outside the head, no train-time augmentation, no active dropout or drop-path in
the backbone (the NOAH recipe's drop-path 0.1 makes the features random per epoch).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn

from petlbench.data import store
from petlbench.data.decode import SplitCache, TensorData

FORMAT = 1  # bump when what a feature entry holds, or how it is computed, changes
MORE_THAN_HEAD = "the method trains more than the head"  # then a frozen prefix may be cached (petlbench.engine.prefix)


@dataclass
class FeatureData:
    """Pre-logit features and labels with TensorData's batch interface, so the one training loop runs on them."""
    features: torch.Tensor  # float32, N x D
    labels: torch.Tensor
    digest: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device: torch.device) -> "FeatureData":
        return replace(self, features=self.features.to(device), labels=self.labels.to(device))

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[idx], self.labels[idx]


def why_not(model: nn.Module, task_keys: list[str], train: TensorData) -> str | None:
    """None when the head can train on cached features; else the reason it cannot."""
    head = model.get_classifier()
    head_names = {name for name, p in model.named_parameters() if any(p is q for q in head.parameters())}
    if set(task_keys) != head_names:
        return MORE_THAN_HEAD
    if train.augment != "none":
        return f"train-time augmentation ({train.augment})"
    for module in model.modules():
        if any(module is m for m in head.modules()):
            continue
        if (isinstance(module, nn.Dropout) and module.p > 0) or (isinstance(module, DropPath) and module.drop_prob > 0):
            return f"{type(module).__name__} is active in the frozen backbone"
    if float(getattr(model, "drop_rate", 0.0) or 0.0) > 0:
        return "the head's input dropout is active"
    return None


@torch.no_grad()
def compute(model: nn.Module, data: TensorData, device: torch.device, batch_size: int,
            amp: torch.dtype | None) -> np.ndarray:
    """Pre-logit features of every image, in order (the backbone in eval mode: deterministic by `why_not`)."""
    was_training = model.training
    model.eval()
    data = data.to(device)
    chunks = []
    for idx in torch.arange(len(data), device=data.device).split(batch_size):
        images, _ = data.batch(idx)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            feats = model.forward_head(model.forward_features(images), pre_logits=True)
        chunks.append(feats.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


class FeatureCache:
    """Features per (backbone, weights, preprocessing, data, precision): on disk in `folder` (None: not kept), and
    per image in memory, so an image met again in another split (NOAH's train800val200 copies train800 and
    val200) is not run through the backbone twice."""

    MEMO_ROWS = 100_000  # about 300 MB of ViT-B features; then the memo starts afresh

    def __init__(self, folder: Path | None):
        self.folder, self.memory, self.rows = folder, {}, {}
        self.prefix = {}  # the last frozen-prefix entry (petlbench.engine.prefix): one, as a ViT-B one holds 600 MB

    def get(self, model: nn.Module, data: TensorData, identity: dict, device: torch.device, batch_size: int,
            amp: torch.dtype | None) -> FeatureData:
        model_key = json.dumps({**identity, "amp": str(amp), "format": FORMAT}, sort_keys=True)
        key = json.dumps({**json.loads(model_key), "data": data.digest}, sort_keys=True)
        name = "features-" + hashlib.sha256(key.encode()).hexdigest()[:24]
        if name not in self.memory:
            if len(self.memory) >= 4:  # a task's train and eval splits, for a backbone or two
                self.memory.pop(next(iter(self.memory)))
            self.memory[name] = self._load(name, key, model_key, model, data, device, batch_size, amp)
        return self.memory[name]

    def features(self, model_key: str, model, data: TensorData, device, batch_size, amp) -> np.ndarray:
        """Every image's features, through the per-image memo: only images not seen yet go through the backbone."""
        memo = self.rows.setdefault(model_key, {})
        if sum(map(len, self.rows.values())) > self.MEMO_ROWS:
            self.rows = {model_key: {}}
            memo = self.rows[model_key]
        images = data.images.numpy() if data.images.device.type == "cpu" else data.images.cpu().numpy()
        hashes = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]
        missing = list({h: i for i, h in reversed(list(enumerate(hashes))) if h not in memo}.values())
        if missing:
            idx = torch.tensor(sorted(missing))
            sub = replace(data, images=data.images[idx], labels=data.labels[idx])
            for i, row in zip(idx.tolist(), compute(model, sub, device, batch_size, amp)):
                memo[hashes[i]] = row
        return np.stack([memo[h] for h in hashes]) if hashes else np.zeros((0, 0), dtype=np.float32)

    def _load(self, name, key, model_key, model, data, device, batch_size, amp) -> FeatureData:
        labels = data.labels.cpu().numpy().astype(np.int64)
        if self.folder is None:
            features = self.features(model_key, model, data, device, batch_size, amp)
            checksum = store.digest([features, labels])
        else:
            width = compute(model, replace(data, images=data.images[:1], labels=data.labels[:1]), device, 1,
                            amp).shape[1]
            features, checksum = fetch_labelled(
                self.folder, name, key, (len(labels), width), labels,
                lambda out: out.__setitem__(..., self.features(model_key, model, data, device, batch_size, amp)))
        return FeatureData(torch.from_numpy(np.array(features)), torch.from_numpy(labels), checksum)


def fetch_labelled(folder: Path, name: str, key: str, shape: tuple, labels: np.ndarray, fill,
                   values: str = "features") -> tuple[np.ndarray, str]:
    """A float32 array `values` of `shape` (features, a prefix's activations) beside its labels, from the verified
    store, or filled by `fill(array)` and stored; an entry whose labels are not the data's is rebuilt."""
    layout = {values: (np.dtype(np.float32), shape), "labels": (np.dtype(np.int64), labels.shape)}

    def fill_both(arrays):
        fill(arrays[values])
        arrays["labels"][:] = labels

    def same_labels(arrays):
        return None if np.array_equal(arrays["labels"], labels) else "cached labels differ from the data's"

    arrays, checksum = store.fetch(folder, name, layout, fill_both, {"key": json.loads(key)}, check=same_labels,
                                   what="feature cache")
    return arrays[values], checksum


class RunCache(SplitCache):
    """What runs read from: the decoded splits (data's SplitCache) plus, next to them, the pre-logit features of
    frozen backbones (`features`; None: not used), so a linear probe never runs its backbone twice."""

    def __init__(self, cache_dir: Path | None = None, features: bool = True):
        super().__init__(cache_dir)
        self.features = FeatureCache(cache_dir / "features" if cache_dir else None) if features else None
