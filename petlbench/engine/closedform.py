"""The data hooks of closed-form methods (`Method.closed_form`: Tip-Adapter's cache and its alpha/beta search).

`apply` sees only the model, but a cache is made of the training images and its settings are chosen on the
validation split. The runner gives both through this module: `fit` (build_model calls it right after `apply`) with
the run's training images, `choose` (the training loop calls it after training, before the test is scored) with the
suite's validation split. Both hand the method the head's inputs, the frozen backbone's pooled features of
un-augmented images in eval mode, from the feature cache when the run has one. The test split is never loaded here.
Validation images that are also training images (a `final` protocol's trainval holds val) are marked, so the method
leaves them out of its choice. What the hooks return is the run record's `closed_form`.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch
from torch import nn

from petlbench.data.decode import TensorData
from petlbench.data import shots
from petlbench.errors import UserError
from petlbench.sidetower import feature_identity
from petlbench.engine.features import RunCache, compute
from petlbench.engine.train import autocast_dtype


class ClosedForm:
    """One run's hooks; `record` collects what they return."""

    def __init__(self, plan, train: TensorData, cache: RunCache, device: torch.device):
        self.plan, self.cache, self.device = plan, cache, device
        self.train = dataclasses.replace(train, augment="none")  # the cache holds each image once, as evaluated
        self.record: dict = {}

    def fit(self, model: nn.Module) -> None:
        """build_model's hook: the method's closed form on the training images."""
        outside = [n for n, p in model.named_parameters()
                   if p.requires_grad and not any(p is q for q in model.get_classifier().parameters())]
        if outside:
            raise RuntimeError(f"closed-form method {self.plan.method.name} trains {outside[0]} outside the head; "
                               "its hooks see the frozen backbone's features, so it may adapt only the head")
        features, labels = self.head_inputs(model, self.train)
        self.record.update(self.plan.method.fit_closed_form(model, features, labels))

    def choose(self, model: nn.Module) -> None:
        """fit's `before_eval`: the method's choice on the validation split, then the test is scored."""
        splits = self.plan.suite.splits["val"]
        if set(splits) & set(self.plan.suite.splits["test"]):
            raise UserError(f"suite {self.plan.suite.name}: the val split {splits} is a test split; "
                            f"{self.plan.method.name} chooses its settings on val, never on test")
        val = self.cache.get(self.plan, splits, self.plan.preprocessing(), train=False)
        k = self.plan.protocol.get("shots")
        if k:  # few-shot: the search sees min(K, 4) images per class of val, as CoOp's and Tip-Adapter's runs
            val, self.record["val_shots"] = shots.take(self.plan, val, list(splits), min(k, shots.VAL_SHOTS), "val")
        features, labels = self.head_inputs(model, val)
        held_out = torch.from_numpy(np.isin(image_hashes(self.train), image_hashes(val)))
        found = self.plan.method.choose_on_val(model, features, labels, held_out)
        self.record.update({"val_splits": list(splits), **found})

    def head_inputs(self, model: nn.Module, data: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
        model.to(self.device)
        amp, batch = autocast_dtype(self.plan.train, self.device), self.plan.train.eval_batch_size
        if self.cache.features is None:
            features = torch.from_numpy(compute(model, data, self.device, batch, amp))
            return features.to(self.device), data.labels.to(self.device)
        b = self.plan.backbone  # the same identity as the linear probe's cached features: one entry for both
        identity = {"backbone": b.name, "args": b.args, "weights": b.weights, "preprocessing": self.plan.preprocessing(),
                    **feature_identity(model)}  # a side tower (CoMo's DINO) is part of the head's input
        found = self.cache.features.get(model, data, identity, self.device, batch, amp)
        return found.features.to(self.device), found.labels.to(self.device)


def image_hashes(data: TensorData) -> np.ndarray:
    """One digest per image of its decoded pixels: the same image in two splits has the same digest."""
    images = data.images.cpu().numpy()
    return np.array([hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() for image in images])
