"""SNELL's released train scripts (ssfgunner/SNELL scripts/{vtab,fgvc}/<variant>/*.sh) -> the settings file `snell`.

Per task: rank (low_rank_dim), sparsity (init_thres), lr, weight decay, batch size and epochs; VTAB-1k has rank 32
only, FGVC ranks 8, 16 and 32. The `snella32` scripts (SNELLA: train_alloc.py, an adaptive sparsity allocation,
and the mixk kernel) are not petlbench methods and stay out. SNELL keeps the best test epoch: its FGVC numbers
(SNELL Table 1 via results/published, ranks 32 and 16) are `best_top1`; its VTAB-1k per-task numbers were not found.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from petlbench.plan import method_label
from petlbench.registry import parse_method_spec
from petlbench.tools.paper_sources import JIE_SCHEDULE, constant, header, published, reference_rows

TASKS = {"stanfordcar": "StanfordCars", "cub": "CUB", "stanforddog": "StanfordDogs", "oxfordflower": "OxfordFlowers",
         "nabirds": "nabirds"}  # FGVC's --data-set -> the fgvc suite's; VTAB-1k's are the suite's names
VARIANTS = ("snell8", "snell16", "snell32")
# arguments every SNELL script passes alike (checked): the recipe, or SNELL itself
FIXED = {"opt": "adamw", "block": "BlockSNELLParallel", "tuning_model": "snell", "freeze_stage": "true",
         "model_name": "vit_base_patch16_224_in21k_snell", "mixup": "0", "cutmix": "0", "smoothing": "0", "seed": "0",
         "test": "true", "val_interval": "10", "launcher": "none", "amp": "", "model-ema": ""}


def label(rank: int) -> str:
    """What `--methods snell:rank=R` selects: 'snell' at the default rank, else 'snell:rank=R'."""
    return method_label(parse_method_spec(f"snell:rank={rank}"))


def snell(reference: Path) -> dict[str, Any]:
    scripts = [s for s in reference_rows(reference / "snell_train_scripts.csv") if s["variant"] in VARIANTS]
    for column, value in FIXED.items():
        if constant(scripts, column) != value:
            raise ValueError(f"column {column!r} is {constant(scripts, column)!r}, expected {value!r}")
    rows = []
    for suite, bench in (("vtab1k", "vtab"), ("fgvc", "fgvc")):
        resize = "true" if bench == "vtab" else ""  # VTAB-1k: --no_aug --direct_resize; FGVC: timm's augmentation
        for s in (r for r in scripts if r["benchmark"] == bench):
            if s["variant"] != f"snell{s['low_rank_dim']}" or (s["no_aug"], s["direct_resize"]) != (resize, resize):
                raise ValueError(f"{s['variant']}/{s['script']}: rank or augmentation not what the folder says")
            rank = int(s["low_rank_dim"])
            top = published(suite, "snell", f"snell:rank={rank}") if suite == "fgvc" and rank != 8 else {}
            task = TASKS.get(s["data-set"], s["data-set"])
            row = {"suite": suite, "task": task, "method": label(rank),
                   "options": {"rank": rank, "sparsity": float(s["init_thres"])},
                   "train": {"lr": float(s["lr"]), "weight_decay": float(s["weight-decay"]),
                             "batch_size": int(s["batch-size"]), "epochs": int(s["epochs"])},
                   "best_top1": top.get(task)}
            rows.append({k: v for k, v in row.items() if v is not None})
    recipe = {
        "backbone": "vit_base_patch16_224.orig_in21k",  # the scripts --resume Google's ViT-B_16.npz (path dropped)
        "backbone_args": {"drop_path_rate": 0.1},  # train.py --drop-path default
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
        "train": {"optimizer": "adamw", "warmup_epochs": 10, "eval_batch_size": 256, "label_smoothing": 0.0,
                  "lr_scale_batch": None, "grad_clip": None, "eval_every": 10, "decay_rule": "timm"},
        "departures": [
            JIE_SCHEDULE.replace("the script", "train.py"),
            "reported: train.py tests every 10 epochs and every epoch of the last 10 (--val_interval 10) and prints "
            "the best (selected on test); petlbench's number is the last epoch, its test curve every 10 epochs "
            "(recipe eval_every 10) gives `table --report max-test` (the last 10 epochs but the 100th unscored)",
            "vtab1k: --no_aug --direct_resize, mixup 0, cutmix 0, smoothing 0 on NOAH's JPEG lists (train800val200, "
            "test): the vtab1k suite's resize to 224x224 (bicubic) and a noah-jpeg data root",
            "fgvc: train.py trains on train.json only (lib/datasets.py with --test: train -> test), petlbench's "
            "final on train + val; its augmentation is timm's create_transform (RandomResizedCrop 0.08-1, flip, "
            "colour jitter 0.4, bicubic), petlbench's the fgvc suite's (resize 256, random crop 224, flip); both "
            "test on resize 256 and centre crop 224 (bilinear there, the recipe's bicubic here)",
            "seed: the scripts run seed 0 once; --amp is off, as petlbench's precision auto on CPU",
        ],
    }
    notes = {
        "snell": "low_rank_dim -> rank, init_thres -> sparsity (the fraction of each update zeroed); SNELL's dropout "
                 "0.1 and drop-path 0.1 on the updates and the trained class token are snell's defaults "
                 "(BlockSNELLParallel, freeze_stage). The rest: model_name, opt adamw, drop-path 0.1, smoothing / "
                 "mixup / cutmix 0 -> the recipe; val_interval 10 -> eval_every 10; test true (train800val200 -> "
                 "test) and seed 0 -> the final protocol, --seeds 0. No counterpart: warm-up lr 1e-6 and min-lr "
                 "1e-5 of the per-epoch schedule (a small change), the every-epoch tests of the last 10 epochs "
                 "(max-test only) and, on FGVC, training on train only with timm's augmentation (can change the "
                 "number): see departures. Left out: the snella32 scripts (SNELLA's train_alloc.py sparsity "
                 "allocation, the mixk kernel): not implemented in petlbench",
        "snell:rank=16": "as snell (rank 16; FGVC only)", "snell:rank=8": "as snell (rank 8; FGVC only)"}
    title = ("SNELL (Shen et al., NeurIPS 2024), per-task rank, sparsity, lr, wd, batch and epochs of its released "
             "scripts: VTAB-1k snell32, FGVC snell8/16/32 (snella32 left out); the best test epoch of one run")
    origin = {"repository": "ssfgunner/SNELL", "commit": "e9d5185",
              "file": "scripts/{vtab,fgvc}/{snell8,snell16,snell32}/*.sh; recipe: train.py, lib/datasets.py, "
                      "lib/utils.py; numbers: results/published rows of source snell (snell:rank=32, snell:rank=16)"}
    return {**header("snell", title, origin, "snell_train_scripts.csv (shared reference paper_settings)", recipe,
                     notes), "rows": rows}
