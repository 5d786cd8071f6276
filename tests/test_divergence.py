"""The training loop's divergence check (petlbench.engine.train): a run is diverged when its loss ends several-fold
above the first step's and worse than guessing, so a model that starts near-perfect (a CLIP prompt method from
zero-shot at batch 1: CoCoOp on the CLIP demo's colours, first step 0.016, last epoch 0.049) is not failed for SGD's
noise, while a blow-up still is."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from petlbench.engine.features import FeatureData
from petlbench.engine.train import Diverged, diverging, fit
from petlbench.specs import TrainConfig

CLASSES = 6


def nearly_solved(first_margin: float, margin: float, n: int = 24, seed: int = 0) -> tuple[nn.Linear, FeatureData]:
    """A linear head that classifies every image right: the image of the first step (batch 1, the loop's seeded
    order) by `first_margin`, the others by `margin` (the CE of each image follows)."""
    labels = torch.arange(n) % CLASSES
    first = int(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[0])
    margins = torch.full((n,), margin)
    margins[first] = first_margin
    head = nn.Linear(CLASSES, CLASSES, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(CLASSES))
    return head, FeatureData(nn.functional.one_hot(labels, CLASSES).float() * margins[:, None], labels)


def test_a_near_perfect_start_that_wanders_is_not_diverged():
    head, data = nearly_solved(first_margin=12.0, margin=5.0)  # CE ~ 3e-5 at the first step, ~0.03 after
    cfg = TrainConfig(optimizer="sgd", lr=1e-9, epochs=2, warmup_epochs=0, batch_size=1, weight_decay=0.0)
    metrics = fit(head, data, data, cfg, torch.device("cpu"), seed=0, progress=False)
    first, last = metrics["train_loss_first_step"], metrics["train_loss_last_epoch"]
    assert last > 3 * first and last < math.log(CLASSES), (first, last)  # above 3x, as CoCoOp's; below guessing
    assert metrics["top1"] == 1.0


def test_a_blow_up_is_still_diverged():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % CLASSES
    data = FeatureData(torch.randn(64, 16, generator=g), labels)
    cfg = TrainConfig(optimizer="sgd", lr=1e7, epochs=3, warmup_epochs=0, batch_size=16, weight_decay=0.0)
    with pytest.raises(Diverged):
        fit(nn.Linear(16, CLASSES), data, data, cfg, torch.device("cpu"), seed=0, progress=False)


def test_the_rule():
    chance = math.log(CLASSES)
    assert diverging(6.0, chance, 3.0, chance), "a fresh head (first ~ ln C) ending above 3x: diverged, as before"
    assert not diverging(5.0, chance, 3.0, chance)
    assert not diverging(0.049, 0.0156, 3.0, chance), "CoCoOp on colours: noise around a near-perfect start"
    assert diverging(2.0, 0.0156, 3.0, chance), "worse than guessing after a near-perfect start: diverged"
