"""Named training recipes of the papers, as data: what a method trains with unless told otherwise.

Each method names the recipe its paper used (`Method.recipe`); a suite (`recipe:`) or the command
line (`--recipe`) can put every method on one recipe instead. The `grid` is the search space of the
`tune` protocol (hyper-parameters chosen on val only, as the VTAB-1k rules demand).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_DECAYS = [0.01, 0.001, 0.0001, 0.0]


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    train: dict[str, Any]  # TrainConfig values for every method
    grid: dict[str, list]  # tune protocol: every combination is tried on train, selected on val
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. full fine-tuning's optimizer
    per_method_grid: dict[str, dict[str, list]] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)  # e.g. drop-path
    preprocessing: dict[str, Any] = field(default_factory=dict)  # mean, std, interpolation

    def train_for(self, method: str) -> dict[str, Any]:
        return {**self.train, **self.per_method.get(method, {})}

    def grid_for(self, method: str) -> dict[str, list]:
        return {**self.grid, **self.per_method_grid.get(method, {})}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source}


RECIPES: dict[str, Recipe] = {
    "vpt": Recipe(
        name="vpt", source="VPT (Jia et al., ECCV 2022), section 4 and appendix A",
        # lr is VPT's base lr: the optimizer gets lr * batch_size / 256.
        train={"optimizer": "sgd", "momentum": 0.9, "lr": 0.5, "weight_decay": 0.0001, "epochs": 100,
               "warmup_epochs": 10, "batch_size": 128, "lr_scale_batch": 256},
        grid={"lr": [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05], "weight_decay": WEIGHT_DECAYS},
        per_method={"full": {"optimizer": "adamw", "lr": 0.0001, "warmup_epochs": 5}},
        per_method_grid={"full": {"lr": [0.001, 0.0005, 0.0001, 0.005], "weight_decay": WEIGHT_DECAYS}},
        preprocessing={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"},
    ),
    "noah": Recipe(
        name="noah", source="NOAH (Zhang et al., 2022) configs, followed by most later VTAB-1k papers",
        train={"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001, "epochs": 100, "warmup_epochs": 10,
               "batch_size": 64},
        grid={"lr": [0.005, 0.001, 0.0005, 0.0001], "weight_decay": [0.0001]},
        backbone_args={"drop_path_rate": 0.1},
        preprocessing={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic"},
    ),
}
