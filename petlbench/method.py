"""The method plugin contract: every PETL method is a `Method` subclass.

A method has a `name`, a dataclass `Config` of its hyper-parameters (with defaults), the training
recipe of its paper (`recipe`, a name in petlbench.recipes, plus `train_defaults` for departures
from it) and `apply(model)`.
The runner freezes the whole backbone before `apply` and trains the classifier head after it, so
`apply` only adds modules (new parameters train by default) or switches `requires_grad` on existing
ones. Methods wrap or replace submodules; they never rebind `forward`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn


class Method:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    # Hyper-parameters of the method itself; replace with a dataclass in subclasses.
    Config: ClassVar[type] = dataclasses.make_dataclass("Config", [])
    # The named recipe (petlbench.recipes) of the paper whose numbers the method is compared with.
    recipe: ClassVar[str] = "noah"
    # Where the method's paper departed from that recipe (TrainConfig keys); unused under a forced recipe.
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    def apply(self, model: nn.Module) -> nn.Module:
        """Add modules and/or mark parameters trainable on a frozen timm model; return the model."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}({dataclasses.asdict(self.config)})"


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(True)
