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
    backbone_args: dict[str, Any] = field(default_factory=dict)  # e.g. drop-path
    preprocessing: dict[str, Any] = field(default_factory=dict)  # mean, std, interpolation
    defaults_source: str = ""  # where a method's untuned defaults come from when it departs from nothing
    # epochs by shots per class under `--shots K` (CoOp's few-shot configs); a K between two listed takes the lower's
    epochs_by_shots: dict[int, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source}


# Untuned defaults: a value the method's paper used or its tune grid most often selects, with the source.
VPT_PROMPT_DEFAULT = ("base lr 1.0, wd 1e-3: VPT's values for VPT-deep on two VTAB-1k tasks (demo.ipynb of "
                      "KMnP/vpt: dmlab and eurosat); VPT published no per-task values for the linear probe, which "
                      "shares its SGD recipe and grid (vpt_shallow and vpt_deep take the per-task evidence instead)")
# VPT's fine-tuning config (configs/base-finetune.yaml), which its code also uses for bias tuning
# (demo.ipynb: 'tinytl-bias' on configs/finetune): full fine-tuning and BitFit depart from the SGD recipe so.
VPT_FINETUNE = {"optimizer": "adamw", "weight_decay": 0.0001, "warmup_epochs": 5}
VPT_FINETUNE_GRID = {"lr": [0.001, 0.0005, 0.0001, 0.005], "weight_decay": WEIGHT_DECAYS}
VPT_FINETUNE_SOURCE = ("AdamW, 5 warm-up epochs, wd 1e-4: VPT's fine-tuning config (configs/base-finetune.yaml), "
                       "which VPT's code also uses for bias tuning (demo.ipynb: 'tinytl-bias' on configs/finetune)")

# CoOp's schedule (KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16.yaml; Dassl's defaults for momentum and decay).
COOP_SOURCE = ("SGD lr 0.002, momentum 0.9, wd 5e-4 on every trained tensor, batch 32, cosine, 1 warm-up epoch, "
               "200 epochs (8 and 16 shots; under --shots K 1 shot: 50, 2 and 4 shots: 100; ImageNet: 50 for all): "
               "KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16*.yaml, COOP.md; Dassl.pytorch dassl/config/defaults.py "
               "(OPTIM.MOMENTUM 0.9, WEIGHT_DECAY 5e-4) and dassl/optim/optimizer.py (one group, every parameter)")

RECIPES: dict[str, Recipe] = {
    "vpt": Recipe(
        name="vpt", source="VPT (Jia et al., ECCV 2022), section 4 and appendix A; KMnP/vpt configs",
        # lr is VPT's base lr: the optimizer gets lr * batch_size / 256 (tune_vtab.py).
        train={"optimizer": "sgd", "momentum": 0.9, "lr": 1.0, "weight_decay": 0.001, "epochs": 100,
               "warmup_epochs": 10, "batch_size": 128, "lr_scale_batch": 256, "decay_rule": "vpt"},
        grid={"lr": [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05], "weight_decay": WEIGHT_DECAYS},
        preprocessing={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"},
        defaults_source=VPT_PROMPT_DEFAULT,
    ),
    "noah": Recipe(
        name="noah", source="NOAH (Zhang et al., 2022) configs, followed by most later VTAB-1k papers",
        train={"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001, "epochs": 100, "warmup_epochs": 10,
               "batch_size": 64, "decay_rule": "timm"},  # NOAH trains through timm's create_optimizer
        grid={"lr": [0.005, 0.001, 0.0005, 0.0001], "weight_decay": [0.0001]},
        backbone_args={"drop_path_rate": 0.1},
        preprocessing={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic"},
        defaults_source=("lr 1e-3, wd 1e-4, batch 64: NOAH's VTAB-1k scripts "
                         "(configs/Adapter/VTAB/slurm_train_adapter_vtab.sh: LR 0.001, WEIGHT_DECAY 0.0001)"),
    ),
    # Departures: CoOp warms up at a constant lr 1e-5 for its 1 epoch and steps the cosine per epoch (Dassl's
    # ConstantWarmupScheduler); here the warm-up is linear from lr x 1e-3 and the cosine steps per batch.
    "coop": Recipe(
        name="coop", source="CoOp (Zhou et al., IJCV 2022), section 4.1; KaiyangZhou/CoOp configs",
        train={"optimizer": "sgd", "momentum": 0.9, "lr": 0.002, "weight_decay": 0.0005, "epochs": 200,
               "warmup_epochs": 1, "batch_size": 32, "decay_rule": "all"},
        grid={"lr": [0.02, 0.005, 0.002, 0.0005], "weight_decay": [0.0005]},  # petlbench's: CoOp tuned nothing
        preprocessing={"interpolation": "bicubic"},  # mean and std: the CLIP weights' own
        defaults_source=COOP_SOURCE,
        # scripts/coop/main.sh with COOP.md: rn50_ep50 for 1 shot, rn50_ep100 for 2 and 4, rn50 (200) for 8 and 16
        # (ImageNet: *_ep50 for all, by hand: --train epochs=50)
        epochs_by_shots={1: 50, 2: 100, 4: 100, 8: 200, 16: 200},
    ),
}


def shot_schedule(recipe: Recipe, shots: int | None) -> dict[str, Any]:
    """The recipe's training settings for K shots per class ({} without --shots or a schedule): the epochs of the
    largest listed K not above it (the smallest listed for fewer)."""
    if not shots or not recipe.epochs_by_shots:
        return {}
    listed = sorted(recipe.epochs_by_shots)
    return {"epochs": recipe.epochs_by_shots[max([k for k in listed if k <= shots] or listed[:1])]}
