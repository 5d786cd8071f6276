"""Scoring classes a model never trained on (the base-to-new protocol's new half, petlbench.data.classsplit).

A head that can classify names it never saw declares `for_classnames(names) -> head`: a classifier over exactly
those names with everything it learned that is not tied to a class (CLIP's zero-shot head: the projection and the
names' zero-shot rows; CoOp: the learned context before the new names). A head without it (a linear layer, a vision
method's fresh head) cannot score new classes: such runs are refused at planning (and, if only the built model
tells, before training), rather than trained for a base number with no new one.
"""
from __future__ import annotations

import json
import traceback

import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.data.classsplit import Split, harmonic_mean, trained_plan
from petlbench.engine.train import evaluate
from petlbench.errors import UserError
from petlbench.params import build_model, plan_text

HOOK = "for_classnames"


def require(head: nn.Module, what: str) -> None:
    """Refuse a head that cannot classify new names, in one line."""
    if not callable(getattr(head, HOOK, None)):
        raise UserError(refusal(type(head).__name__, what))


def refusal(head: str, what: str) -> str:
    return (f"--base-to-new: {what}: its head ({head}) cannot classify classes it never trained on (no {HOOK}); "
            "use a text method (zeroshot, coop, ...) or a CLIP backbone with --backbone-args head=zeroshot")


_CHECKED: dict[str, str | None] = {}  # the head's class name when it cannot classify new names, else None


def check(plan) -> None:
    """Planning: build the run's model on the meta device (no weights, nothing fetched) and refuse it unless its head
    declares `for_classnames`. A method whose apply needs real tensors is left to its run (`require` before
    training)."""
    what = f"{plan.method.name} on {plan.backbone.name}"
    key = json.dumps([plan.method.name, plan.method.identity(), plan.backbone.name, plan.backbone.args],
                     sort_keys=True, default=repr)
    if key not in _CHECKED:
        base = trained_plan(plan)
        meta = BackboneSpec(base.backbone.name, dict(base.backbone.args), pretrained=False)
        text = plan_text(base)
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                model = build_model(meta, base.method, base.task.classes, 0, **text).model
            head = model.get_classifier()
            _CHECKED[key] = None if callable(getattr(head, HOOK, None)) else type(head).__name__
            if _CHECKED[key] is None:  # the hook itself may refuse (CoOp's class-specific context): ask it now
                getattr(head, HOOK)(["a class it never saw"])
        except UserError as exc:
            raise UserError(f"--base-to-new: {what}: {exc}") from None
        except Exception:  # noqa: BLE001 -- needs real tensors: its run checks the built head before training
            _CHECKED[key] = None
    if _CHECKED[key] is not None:
        raise UserError(refusal(_CHECKED[key], what))


@torch.no_grad()
def score(model: nn.Module, split: Split, plan, base_top1: float, device: torch.device) -> dict[str, float]:
    """The new classes' top-1 with the head rebuilt for their names, beside the base top-1 and their harmonic
    mean. The trained head is put back afterwards (it is the one saved)."""
    if len(split.new_names) != split.classes - split.base:
        raise UserError(f"--base-to-new: task {plan.task.name} names {len(split.base_names + split.new_names)} "
                        f"classes, expected {split.classes}: the new classes are scored by their names")
    head = model.get_classifier()
    require(head, f"{plan.method.name} on {plan.backbone.name}")
    new_head = getattr(head, HOOK)(list(split.new_names))
    model.head = new_head
    try:
        new_top1 = evaluate(model.to(device), split.new_test.to(device), plan.train, device)
    finally:
        model.head = head
    split.described["new_head"] = f"{type(head).__name__}.{HOOK}"
    return {"base_top1": base_top1, "new_top1": new_top1, "hm": harmonic_mean(base_top1, new_top1)}


def into_record(trained, split: Split, plan, record: dict, device: torch.device):
    """The new classes' top-1 (and base, HM) into the record's metrics; a failure here fails the run (None)."""
    try:
        record["metrics"].update(score(trained[0], split, plan, record["metrics"][plan.metric], device))
        return trained
    except UserError as exc:
        record.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 -- recorded and retried next time, as run_one does
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    return None
