"""Build backbone + method the way every run does, and count parameters the way papers report them."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from petlbench.backbone import BackboneSpec, create_backbone
from petlbench.errors import UserError
from petlbench.method import Method, freeze, unfreeze

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


def build_model(spec: BackboneSpec, method: Method, num_classes: int, seed: int) -> Built:
    """Backbone (fixed init seed) -> fresh head (run seed) -> freeze -> method.apply -> head trains ->
    frozen BatchNorms keep their running statistics."""
    torch.manual_seed(BACKBONE_INIT_SEED)
    model = create_backbone(spec, num_classes)
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)
    before = numel(model.parameters())
    backbone = before - numel(model.get_classifier().parameters())
    known = {id(t) for t in (*model.parameters(), *model.buffers())}
    freeze(model)
    method.check_fit(model)
    model = method.apply(model)
    unfreeze(model.get_classifier())
    head = numel(model.get_classifier().parameters())  # after apply: a method may widen the head (VQT)
    freeze_batch_norms(model)
    task_keys = task_state_keys(model, known)
    total = numel(model.parameters())
    trainable = numel(p for p in model.parameters() if p.requires_grad)
    counts = ParamCounts(trainable, trainable - head, head, backbone, total - backbone - head, total)
    return Built(model, counts, task_keys)


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
