"""Build backbone + method the way every run does, and count parameters the way papers report them."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from petlbench.backbone import BackboneSpec, create_backbone
from petlbench.method import Method, freeze, unfreeze

BACKBONE_INIT_SEED = 0  # every run of a random-init backbone sees the same backbone


@dataclass
class ParamCounts:
    trainable: int  # everything that trains, head included
    trainable_excl_head: int  # what papers' "trainable params" columns count
    head: int
    backbone: int  # the backbone alone, without head, before the method
    added: int  # parameters the method added to the model
    total: int  # the whole adapted model

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def numel(params) -> int:
    return sum(p.numel() for p in params)


def build_model(spec: BackboneSpec, method: Method, num_classes: int, seed: int) -> tuple[nn.Module, ParamCounts]:
    """Backbone (fixed init seed) -> fresh head (run seed) -> freeze -> method.apply -> head trains."""
    torch.manual_seed(BACKBONE_INIT_SEED)
    model = create_backbone(spec, num_classes)
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)
    head_size = numel(model.get_classifier().parameters())
    before = numel(model.parameters())
    freeze(model)
    model = method.apply(model)
    unfreeze(model.get_classifier())
    total = numel(model.parameters())
    trainable = numel(p for p in model.parameters() if p.requires_grad)
    counts = ParamCounts(trainable, trainable - head_size, head_size, before - head_size, total - before, total)
    return model, counts
