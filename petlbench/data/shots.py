"""The few-shot protocol (`--shots K`): K training images per class, drawn per seed, the same for every method.

CoOp's protocol (KaiyangZhou/CoOp, `DatasetBase.generate_fewshot_dataset`): K images per class from the training
split, validation on min(K, 4) per class from the val split, test on the full test split. The draw depends only on
(seed, task, K, the split's labels), never on the method, so every method of a seed trains on the same images;
it never touches the test split. A class with fewer than K images gives all it has, and the record says so
(`data.shots.short`). The drawn images are listed in the record as indices into the split's list (the splits of
`train_splits` in order, as the loader concatenates them) with a sha256 of that list, so a run can be audited.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch

from petlbench.data.decode import TensorData
from petlbench.data.layouts import find_task_dir, list_images
from petlbench.errors import UserError

VAL_SHOTS = 4  # CoOp: validation on min(K, 4) images per class


def check_shots(k: Any) -> int | None:
    """--shots: None (all the data) or a positive integer."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"--shots: expected a positive integer (images per class), got {k!r}")
    return k


def few_shot_protocol(protocol: dict[str, Any], splits: dict[str, list[str]], k: int | None) -> dict[str, Any]:
    """The protocol of a run under `--shots K` (unchanged without): `shots` (part of the run's identity), and where
    the shots come from. `final` (and `paper`) draw from trainval; `tune` draws from train in both stages (CoOp's
    final model is the one trained on the train shots), selecting on min(K, 4) val images per class."""
    if k is None:
        return protocol
    out = {**protocol, "shots": k}
    if protocol.get("name") == "tune":
        out["train_splits"] = list(splits["train"])
        if protocol.get("stage") == "search":
            out["val_shots"] = min(k, VAL_SHOTS)
        out["shots_from"] = "train split in both stages (CoOp); the final run trains on the search's shots of its seed"
    return out


def draw(labels: np.ndarray, per_class: int, classes: int, seed: int, task: str, role: str
         ) -> tuple[np.ndarray, dict[int, int]]:
    """Sorted indices of `per_class` images of every class (all of a class that has fewer) and those classes with
    how many they had. Deterministic in (seed, task, per_class, role) and the labels, independent of anything else."""
    key = hashlib.sha256(f"petlbench-shots\0{role}\0{task}\0{per_class}\0{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # per class, its indices in list order: one sort, not a scan per class
    bounds = np.searchsorted(labels[order], np.arange(max(classes, int(labels.max()) + 1 if labels.size else 0) + 1))
    chosen, short = [], {}
    for c in range(len(bounds) - 1):
        members = order[bounds[c]:bounds[c + 1]]
        if len(members) <= per_class:
            chosen.append(members)
            if len(members) < per_class:
                short[c] = len(members)
        else:
            chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64), short


def subset(data: TensorData, indices: np.ndarray) -> TensorData:
    """The chosen images (copied out of a memory-mapped split), with a digest naming the draw."""
    idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    digest = hashlib.sha256(f"{data.digest} shots {list_sha256(indices)}".encode()).hexdigest()
    return dataclasses.replace(data, images=data.images[idx], labels=data.labels[idx], digest=digest)


def list_sha256(values) -> str:
    return hashlib.sha256("\n".join(str(v) for v in values).encode()).hexdigest()


def split_list(plan, splits: list[str]) -> list[str]:
    """The entries `relative path<TAB>label` of `splits` in loading order: what the recorded indices point into."""
    task_dir = find_task_dir(plan.data_root, plan.task)
    items = [item for split in splits
             for item in list_images(plan.suite.layout, task_dir, plan.task, split, plan.suite.split_names())]
    return [f"{path.relative_to(task_dir).as_posix() if path.is_relative_to(task_dir) else path}\t{label}"
            for path, label in items]


def take(plan, data: TensorData, splits: list[str], per_class: int, role: str) -> tuple[TensorData, dict[str, Any]]:
    """Draw from `data` (the splits `splits`) and describe the draw for the record."""
    if set(splits) & set(plan.suite.splits["test"]):
        raise UserError(f"--shots: the {role} images of {plan.task.name} would be drawn from the test split "
                        f"({', '.join(splits)}); shots come from the training split only")
    indices, short = draw(data.labels.numpy(), per_class, plan.task.classes, plan.seed, plan.task.name, role)
    entries = split_list(plan, splits)
    if len(entries) != len(data):
        raise UserError(f"{plan.task.name}: {splits} list {len(entries)} images but {len(data)} were loaded")
    described = {"per_class": per_class, "splits": list(splits), "images": int(len(indices)),
                 "indices": [int(i) for i in indices], "list_sha256": list_sha256(entries),
                 "sample_sha256": list_sha256(entries[i] for i in indices),
                 "short": {str(c): n for c, n in short.items()}}
    return subset(data, indices), described


def apply(plan, train: TensorData, evaluation: TensorData) -> tuple[TensorData, TensorData, dict[str, Any] | None]:
    """The run's data under its protocol: the K shots of training data (and min(K, 4) per class of val when the
    run selects on val); unchanged without `shots`. The third value goes into the record as `data.shots`."""
    k = plan.protocol.get("shots")
    if not k:
        return train, evaluation, None
    if train.labels.dim() == 2:  # multi-hot rows have no one class to draw K of
        raise UserError(f"--shots: task {plan.task.name} is multi-label; K shots per class need one class per image")
    train, described = take(plan, train, plan.protocol["train_splits"], k, "train")
    described = {"k": k, **described}
    if plan.protocol.get("val_shots"):
        evaluation, described["val"] = take(plan, evaluation, plan.protocol["eval_splits"], plan.protocol["val_shots"],
                                            "val")
    return train, evaluation, described
