"""Train, prune, rewind, train again: one run of a pruning method (`Method.rewinds`: E2VPT's pruning).

As E2VPT's tune_vtab_PruningRewind_CVK.py does for one (tokens, pieces) pair: a first training on the run's training
data; the method's `prune` scores the trained model on one epoch of that data (seeded order, as
petlbench.engine.selection hands `select` its batches; never a validation or test image) and says what to cut; the
model is built again from the run's seed, so it starts from the first training's initialisation (the lottery
ticket's rewind), `rewind` fixes the cut and the loop trains it again. The run record's `pruning` holds the cut,
the scores, the first training's final loss, and the time it took; `params` counts the second model's trainables.
The first training's evaluation is recorded as it was (`first_training`), never used to choose anything.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn

from petlbench.data.decode import TensorData
from petlbench.engine.selection import batches
from petlbench.params import Built, numel

PRUNE_STREAM = 0x9A0E  # mixed into the run seed: the scoring pass's order differs from the training loop's


def prune_and_rewind(plan, model: nn.Module, train: TensorData, device: torch.device,
                     first_training: Callable[[nn.Module], dict], rebuild: Callable[[], Built],
                     ) -> tuple[Built, dict[str, Any]]:
    """The second model (built again, cut fixed, untrained) and the record's `pruning`."""
    start = time.perf_counter()
    first = first_training(model)
    model.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(plan.seed ^ PRUNE_STREAM)
        pruned = plan.method.prune(model, batches(train.to(device), plan.train.batch_size, plan.seed ^ PRUNE_STREAM))
    again = rebuild()
    plan.method.rewind(again.model, pruned)
    trainable = numel(p for p in again.model.parameters() if p.requires_grad)
    counts = replace(again.counts, trainable=trainable, trainable_excl_head=trainable - again.counts.head)
    kept = {"top1": first.get("top1"), "train_loss_last_epoch": first.get("train_loss_last_epoch"),
            "epochs": first.get("epochs")}
    record = {**pruned, "first_training": kept, "first_training_s": round(time.perf_counter() - start, 3)}
    return Built(again.model, counts, again.task_keys), record
