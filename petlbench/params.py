"""Build backbone + method the way every run does, and count parameters the way papers report them."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from petlbench.backbone import BackboneSpec, create_backbone
from petlbench.errors import UserError
from petlbench.method import Method, freeze

BACKBONE_INIT_SEED = 0  # every run of a random-init backbone sees the same backbone


@dataclass
class ParamCounts:
    trainable: int  # everything that trains, head included
    trainable_excl_head: int  # what papers' "trainable params" columns count
    head: int
    backbone: int  # the backbone alone, without head, before the method
    added: int  # parameters the method added to the model (a bigger head included)
    total: int  # the whole adapted model

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Built(NamedTuple):
    model: nn.Module
    counts: ParamCounts
    task_keys: list[str]  # state-dict names that define the trained task: what trains + buffers the method added


def numel(params) -> int:
    return sum(p.numel() for p in params)


def build_model(spec: BackboneSpec, method: Method, num_classes: int, seed: int,
                classnames: list[str] | None = None, templates: list[str] | None = None,
                closed_form: Callable[[nn.Module], None] | None = None) -> Built:
    """Backbone (fixed init seed) -> fresh head (run seed) -> freeze -> method.apply -> head trains ->
    frozen BatchNorms keep their running statistics. A CLIP backbone's zero-shot head and text methods read the
    task's class names and templates. `closed_form(model)` runs right after `apply` (a closed-form method's data
    hook, petlbench.engine.closedform, or a selecting method's, petlbench.engine.selection), so what it sizes
    (Tip-Adapter's cache) is counted and saved."""
    torch.manual_seed(BACKBONE_INIT_SEED)
    model = create_backbone(spec, num_classes, classnames, templates)
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)
    text = getattr(model, "clip", None)  # a CLIP backbone's text side: not the image model's, known all the same
    text_ids = {id(t) for t in ((*text.tower.parameters(), *text.tower.buffers()) if text else ())}
    alive = (*model.parameters(), *model.buffers())  # held to the end: a freed tensor's id could be reused
    known = {id(t) for t in alive} | text_ids
    backbone = numel(model.parameters()) - numel(head_parameters(model.get_classifier()))
    freeze(model)
    method.check_fit(model)
    model = method.apply(model)
    if closed_form is not None:
        closed_form(model)
    unfreeze_head(model.get_classifier())
    head = numel(classifier_parameters(model.get_classifier()))  # after apply: a method may widen the head (VQT)
    # pretrained tensors a method's head took in count as backbone: CoOp's text tower, the zero-shot head's copies
    joined = {id(p): p for p in frozen_head_parts(model.get_classifier()) if id(p) not in known}
    joined.update({id(p): p for p in model.parameters() if id(p) in text_ids})
    backbone += numel(joined.values())
    freeze_batch_norms(model)
    task_keys = task_state_keys(model, known)
    total = numel(model.parameters())
    trainable = numel(p for p in model.parameters() if p.requires_grad)
    counts = ParamCounts(trainable, trainable - head, head, backbone, total - backbone - head, total)
    return Built(model, counts, task_keys)


def plan_text(plan) -> dict[str, list[str] | None]:
    """build_model's class names and templates from a run plan (None for an image-only backbone)."""
    text = plan.text() or {}
    return {"classnames": text.get("classnames") or None, "templates": text.get("templates") or None}


_META_COUNTS: dict[str, ParamCounts | None] = {}


def meta_counts(spec: BackboneSpec, method: Method) -> ParamCounts | None:
    """The method built on the backbone as every run builds it, on the meta device (no weights, no memory, nothing
    fetched), once per method configuration and backbone: planning's proof that the configuration builds at all.

    An option that does not fit the backbone (check_fit, or a refusal inside apply) is a UserError, raised here, at
    planning, before any run. None: the method cannot be built without real tensors (its apply reads weights), so
    only its runs can tell."""
    key = json.dumps([method.name, method.identity(), spec.name, spec.args], sort_keys=True, default=repr)
    if key not in _META_COUNTS:
        meta = dataclasses.replace(spec, pretrained=False, checkpoint=None, checkpoint_sha256=None)
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                _META_COUNTS[key] = build_model(meta, method, num_classes=2, seed=0).counts
        except UserError:
            raise
        except Exception:  # noqa: BLE001 -- needs real tensors; not a verdict on the configuration
            _META_COUNTS[key] = None
    return _META_COUNTS[key]


def count_params(spec: BackboneSpec, method: Method, num_classes: int) -> ParamCounts:
    """`petlbench params`: the counts of the model every run builds, on the meta device (ViT-B in a blink, no
    memory); built for real only when the method's apply reads weights (the counts are the same)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return build_model(spec, method, num_classes, seed=0).counts
    except UserError:
        raise
    except Exception:  # noqa: BLE001 -- needs real tensors
        return build_model(spec, method, num_classes, seed=0).counts


def frozen_head_parts(head: nn.Module) -> list[nn.Parameter]:
    """Pretrained tensors inside a head that stay frozen when it trains (`head.frozen_parts()`: CLIP's projection,
    the text tower a prompt head runs)."""
    parts = getattr(head, "frozen_parts", None)
    return [p for part in (parts() if parts else ()) for p in part.parameters()]


def head_parameters(head: nn.Module) -> list[nn.Parameter]:
    """The head's own parameters: what the runner trains after `apply`."""
    frozen = set(map(id, frozen_head_parts(head)))
    return [p for p in head.parameters() if id(p) not in frozen]


def classifier_parameters(head: nn.Module) -> list[nn.Parameter]:
    """The head's own parameters without its method parts (`head.method_parts()`: CLIP-Adapter's MLP, Tip-Adapter-F's
    cache keys, which train with the head but are the method's, counted in `trainable_excl_head` as papers do)."""
    parts = getattr(head, "method_parts", None)
    method = {id(p) for part in (parts() if parts else ()) for p in part.parameters()}
    return [p for p in head_parameters(head) if id(p) not in method]


def unfreeze_head(head: nn.Module) -> None:
    """The head trains, but for the pretrained parts it names as frozen (they stay frozen even when new)."""
    for p in head_parameters(head):
        p.requires_grad_(True)
    for p in frozen_head_parts(head):
        p.requires_grad_(False)


def task_state_keys(model: nn.Module, known: set[int]) -> list[str]:
    """What defines a trained task: the parameters that train, the buffers the method added, and the buffers
    of modules that train (a fine-tuned BatchNorm's running statistics)."""
    keys = [name for name, p in model.named_parameters() if p.requires_grad]
    for prefix, module in model.named_modules():
        trains = isinstance(module, nn.BatchNorm2d) and not isinstance(module, FrozenStatsBatchNorm2d) and any(
            p.requires_grad for p in module.parameters(recurse=False))
        keys += [f"{prefix}.{name}" if prefix else name for name, b in module.named_buffers(recurse=False)
                 if trains or id(b) not in known]
    return list(dict.fromkeys(keys))


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm that always normalises with its running statistics and never updates them; its weight and
    bias stay parameters (BitFit may train the bias). The same tensors, so saved names and identities hold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                        self.eps)


def freeze_batch_norms(model: nn.Module) -> None:
    """A BatchNorm whose scale does not train is frozen, statistics included: model.train() would otherwise
    update the running statistics of a frozen backbone (a ResNet's linear probe, BitFit)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d and child.track_running_stats and not (
                    child.weight is not None and child.weight.requires_grad):
                frozen = FrozenStatsBatchNorm2d.__new__(FrozenStatsBatchNorm2d)
                frozen.__dict__.update(child.__dict__)  # the same parameters and buffers, another forward
                setattr(parent, name, frozen)
