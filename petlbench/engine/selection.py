"""The data hook of selecting methods (`Method.selects`: GPS chooses the weights that train from their gradients).

`apply` sees only the model, but a selection is made from the task's training images. build_model calls `fit` right
after `apply` (before parameters are counted, before training) with one epoch of the run's training data: the images
the training loop sees (normalised, with the run's training augmentation), in an order drawn from the run's seed, so
a run's selection is reproducible. Only the training data given to the run reaches the method (a tune search's
train, never val; a final's trainval); the test split never does. What `select` returns is the run record's
`parameter_selection` (not `selection`, which holds a tuned final's grid choice).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from petlbench.data.decode import TensorData

SELECTION_STREAM = 0x5E1EC7  # mixed into the run seed: the selection's draws differ from the training loop's


class Selection:
    """One run's hook; `record` holds what the method returned."""

    def __init__(self, method, train: TensorData, batch_size: int, seed: int, device: torch.device):
        self.method, self.train, self.batch_size, self.seed, self.device = method, train, batch_size, seed, device
        self.record: dict = {}

    def fit(self, model: nn.Module) -> None:
        """build_model's hook: the method's selection on the training data, with every random draw seeded."""
        model.to(self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed ^ SELECTION_STREAM)
            self.record.update(self.method.select(model, batches(self.train.to(self.device), self.batch_size,
                                                                 self.seed ^ SELECTION_STREAM)))


def batches(data: TensorData, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (images, labels) in a seeded order, augmented as the training loop augments."""
    order = torch.Generator().manual_seed(seed)
    for idx in torch.randperm(len(data), generator=order).split(batch_size):
        yield data.batch(idx.to(data.device), generator=order)
