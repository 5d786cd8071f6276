"""Terms a method adds to the training loss beside the classifier's cross-entropy (CAVPT's class-aware prompt loss).

A module of the adapted model that subclasses `AuxiliaryLoss` keeps what its last training forward produced and,
given the batch's labels, returns its term; the training loop adds every such term to the loss of that forward.
Found structurally (by class, among the model's modules), so methods without one are untouched.
"""
from __future__ import annotations

import torch
from torch import nn


class AuxiliaryLoss:
    """Mixin for an nn.Module: `auxiliary_loss(labels)` is its term for the last forward, or None (nothing to add)."""

    def auxiliary_loss(self, labels: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError


def auxiliary_loss(model: nn.Module, labels: torch.Tensor) -> torch.Tensor | float:
    """The sum of every auxiliary term of the model's last forward (0 for a model without any)."""
    terms = [m.auxiliary_loss(labels) for m in model.modules() if isinstance(m, AuxiliaryLoss)]
    terms = [t for t in terms if t is not None]
    return sum(terms) if terms else 0.0
