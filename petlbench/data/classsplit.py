"""The base-to-new protocol (`--base-to-new`, CoCoOp): train on the base half of the classes, test on both halves.

CoCoOp (Zhou et al., CVPR 2022; KaiyangZhou/CoOp `datasets/oxford_pets.py` `subsample_classes`, run by
`scripts/cocoop/base2new_{train,test}.sh`): the labels sorted, base = the first ceil(C/2), new = the rest, each half
relabelled 0..m-1. Training (and validation, for any choice) sees only base-class images, drawn after the few-shot
draw as CoCoOp draws (its shots come from every class, then the base classes are kept), so a base-to-new run trains
on the base-class images of the same seed's all-class K-shot draw. The base test images are scored by a classifier
over the base classes, the new test images by one over the new classes only, rebuilt from their names (the head's
`for_classnames`, petlbench.engine.newclasses). Labels are already 0..C-1 in sorted order here, so base labels stay
as they are and new labels are shifted down by m.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from petlbench.data.decode import TensorData
from petlbench.errors import UserError

RULE = "CoCoOp's subsample_classes: labels sorted, base = the first ceil(C/2), new = the rest, each relabelled from 0"


def base_count(classes: int) -> int:
    """How many classes are base: ceil(C / 2) (CoCoOp's `math.ceil(n / 2)`)."""
    return math.ceil(classes / 2)


def halves(classes: int) -> tuple[range, range]:
    """The base and the new labels of a task of `classes` classes."""
    m = base_count(classes)
    return range(0, m), range(m, classes)


def protocol(found: dict[str, Any]) -> dict[str, Any]:
    """The protocol of a run under `--base-to-new` (other runs' protocols never get the key: their identity holds)."""
    return {**found, "base_to_new": True}


def harmonic_mean(base: float, new: float) -> float:
    """CoCoOp's H = 2 base new / (base + new); 0 when both are 0."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


@dataclass
class Split:
    """A run's class split: how many classes are base, the names of each half, and the new classes' test images."""
    base: int
    classes: int
    base_names: list[str]
    new_names: list[str]
    new_test: TensorData | None  # None under tune's search (validation is base classes only)
    described: dict[str, Any]  # the record's data.base_to_new


def select(data: TensorData, labels: range, tag: str) -> TensorData:
    """The images whose label is in `labels`, relabelled from 0, with a digest naming the selection."""
    keep = (data.labels >= labels.start) & (data.labels < labels.stop)
    idx = torch.nonzero(keep.cpu(), as_tuple=True)[0]
    digest = hashlib.sha256(f"{data.digest} {tag} {labels.start}:{labels.stop}".encode()).hexdigest()
    return dataclasses.replace(data, images=data.images[idx.to(data.images.device)],
                               labels=data.labels[idx.to(data.labels.device)] - labels.start, digest=digest)


def apply(plan, train: TensorData, evaluation: TensorData) -> tuple[TensorData, TensorData, Split | None]:
    """The run's data under base-to-new: training and evaluation on base classes, the new test images aside
    (a search stage evaluates on val: base classes only, nothing aside). Unchanged without `base_to_new`."""
    if not plan.protocol.get("base_to_new"):
        return train, evaluation, None
    classes = plan.task.classes
    if train.labels.dim() == 2:  # an image of a base and a new class is neither
        raise UserError(f"--base-to-new: task {plan.task.name} is multi-label; base and new classes need one class "
                        "per image")
    if classes < 2:
        raise UserError(f"--base-to-new: task {plan.task.name} has {classes} class; base and new need at least 2")
    base, new = halves(classes)
    names = list(plan.task.classnames)  # [] when the task names none: the new classes cannot be scored by name
    new_test = None if plan.protocol.get("stage") == "search" else select(evaluation, new, "new")
    train, evaluation = select(train, base, "base"), select(evaluation, base, "base")
    described = {"rule": RULE, "base_classes": len(base), "new_classes": len(new),
                 "train_images": len(train), "base_eval_images": len(evaluation),
                 "new_test_images": None if new_test is None else len(new_test),
                 "new_test_digest": None if new_test is None else new_test.digest}
    return train, evaluation, Split(len(base), classes, names[:len(base)], names[len(base):], new_test, described)


def trained_plan(plan):
    """The plan the model is built from: under base-to-new its task has the base classes and their names only
    (the data are read with the whole task, whose labels the split files hold)."""
    if not plan.protocol.get("base_to_new"):
        return plan
    m = base_count(plan.task.classes)
    task = dataclasses.replace(plan.task, classes=m, classnames=list(plan.task.classnames)[:m])
    return dataclasses.replace(plan, task=task)
