"""The converters of GPS and DTL (their released per-task train scripts -> petlbench settings files).

Each reads a transcription of the official scripts (REFERENCE_DIR/{gps,dtl}_train_scripts.csv) and maps every
argument onto a method option, a training value or the recipe; an argument that should be the same in every script
(the recipe's) is checked to be, so a transcription that says otherwise fails instead of being silently averaged.
The numbers compared with are the rows of results/published that carry these methods (V-PETL Bench's README table,
source key `vpetl`, selection test_best): they go into `best_top1`, compared by `table --report max-test`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from petlbench.tools.paper_sources import SSF_TASKS, constant, header, published, reference_rows

SUITES = {"vtab": "vtab1k", "fgvc": "fgvc"}
HALF = (0.5, 0.5, 0.5)  # timm's IMAGENET_INCEPTION_MEAN / _STD: both codes' ViT default_cfg (GPS) or loader (DTL)
VPETL = ("the number: results/published row of source vpetl (V-PETL Bench README @c188fad, selection test_best)")


def checked(rows: list[dict[str, str]], expected: dict[str, str]) -> None:
    """Arguments the recipe holds, or that petlbench builds one way only: the same in every script, as expected."""
    for column, value in expected.items():
        if constant(rows, column) != value:
            raise ValueError(f"column {column!r} is {constant(rows, column)!r} in every script, expected {value!r}")


# --- GPS (FightingFighting/GPS @72e0c31, train_gps.py) ---

GPS_FIXED = {"opt": "adam", "epochs": "100", "warmup-epochs": "10", "warmup-lr": "1e-7", "min-lr": "1e-8",
             "img-size": "224", "model": "vit_base_patch16_224_in21k", "pretrained": "true", "pruning": "true",
             "pruning_method": "gradient_perCell", "tuning-mode": "part", "contrast-aug": "true", "amp": "true",
             "no-prefetcher": "true"}
GPS_DEPARTURES = [
    "schedule: timm's create_scheduler steps per epoch (warm-up from 1e-7 over 10 epochs, cosine to min-lr 1e-8, "
    "then 10 cooldown epochs at 1e-8: 110 epochs); petlbench steps per batch over 100 epochs, warms up from lr x "
    "1e-3 and decays to 0 (the cooldown's lr of 1e-8 moves nothing that matters)",
    "--amp (fp16 autocast) there, petlbench's precision auto; --validation-batch-size (128 on 12 VTAB scripts) only "
    "sets the test batch, which changes no number",
    "data: train800val200 -> test as petlbench's final runs; GPS's loader drops the last partial training batch, "
    "petlbench keeps it",
    "vtab1k: --no-aug --direct-resize, mixup 0, cutmix 0, smoothing 0: the suite's preprocessing (resize to 224x224, "
    "bicubic, no augmentation)",
    "fgvc: --simple-aug (RandomResizedCrop 224 + flip) with train_gps.py's defaults mixup 0.8, cutmix 1.0, smoothing "
    "0.1, and --model-ema (decay 0.9998; 0.99 for oxford_flowers; train_gps.py logs the best test top-1 of the raw "
    "and of the EMA weights; which of the two the published row is was not checked): petlbench has no mixup, "
    "cutmix or EMA, uses the fgvc suite's preprocessing and label smoothing 0.1; these change the number",
    "selection: the views of the gradient epoch lack GPS's colour jitter and grayscale (methods/gps.py)",
    "reported: train_gps.py tests every epoch and keeps the best top-1 (selected on test); petlbench's number is the "
    "last epoch, its test curve every 10 epochs (eval_every 10; --train eval_every=1 for GPS's) gives `table "
    "--report max-test`",
    "weights: GPS's --pretrained loads its default_cfg's augreg B_16-i21k npz (vit_base_patch16_224.augreg_in21k); "
    "results/published labels V-PETL's GPS rows orig_in21k, so `table` warns that the weights differ",
]
GPS_REPORTED = ("best_top1: GPS's best test epoch of one run (selected on test; train_gps.py keeps it), as V-PETL "
                "Bench's README reprints GPS's tables; its vtab1k cifar (81.1) comes from a run on VPT's TFDS "
                "pipeline (GPS issue #10), not this recipe's data; top1: none (no last-epoch number is given)")
GPS_NOTES = {"gps": "times_para -> k (entries trained per output row); --contrastive --contrast-aug (SupConLoss of "
                    "two augmented views, temperature 0.07) -> loss supcon, petlbench's default; --pruning "
                    "--pruning_method gradient_perCell --tuning-mode part: the method itself (its biases train too); "
                    "lr, weight-decay, batch-size, drop-path per task; --dataset, --num-classes, --img-size 224: the "
                    "suite's task and the backbone's input; --log-wandb, --run_name, --no-prefetcher: logging and "
                    "loading only (no number changes); " + VPETL}


def gps(reference: Path) -> dict[str, Any]:
    scripts = reference_rows(reference / "gps_train_scripts.csv")
    checked(scripts, GPS_FIXED)
    tops = {suite: published(suite, "vpetl", "gps") for suite in SUITES.values()}
    rows = []
    for s in scripts:
        suite, task = SUITES[s["benchmark"]], SSF_TASKS.get(s["task"], s["task"])
        train = {"lr": float(s["lr"]), "weight_decay": float(s["weight-decay"]), "batch_size": int(s["batch-size"])}
        if suite == "fgvc":  # no --smoothing: train_gps.py's default 0.1 (inside its mixup targets)
            train["label_smoothing"] = 0.1
        row = {"suite": suite, "task": task, "method": "gps", "options": {"k": int(s["times_para"])}, "train": train,
               "backbone_args": {"drop_path_rate": float(s["drop-path"])}, "best_top1": tops[suite].get(task)}
        if s["contrastive"] != "true":  # flowers102: the script passes --contrastiveve
            row["note"] = ("its released script passes --contrastiveve, which train_gps.py's parser refuses (it cannot "
                           "run as released): converted as --contrastive, as the other 23 scripts")
        rows.append(row)
    recipe = {"backbone": "vit_base_patch16_224.augreg_in21k", "backbone_args": {"drop_path_rate": 0.0},
              "mean": list(HALF), "std": list(HALF), "interpolation": "bicubic",
              "train": {"optimizer": "adam", "lr": 0.002, "weight_decay": 0.0, "epochs": 100, "warmup_epochs": 10,
                        "batch_size": 32, "eval_batch_size": 512, "label_smoothing": 0.0, "lr_scale_batch": None,
                        "grad_clip": None, "eval_every": 10, "decay_rule": "timm"},  # timm's create_optimizer_v2
              "departures": GPS_DEPARTURES}
    title = ("GPS (Zhang et al., CVPR 2024), per-task settings of its 24 released train scripts (19 VTAB-1k, 5 FGVC); "
             "the numbers of V-PETL Bench's README (GPS's own table, the best test epoch of one run)")
    origin = {"repository": "FightingFighting/GPS", "commit": "72e0c31",
              "file": "train_scripts/vit/{vtab,fgvc}/<task>/train_gps.sh; recipe: train_gps.py, args.py, "
                      "models/vision_transformer.py, data/vtab.py; numbers: results/published rows of source vpetl, "
                      "method gps"}
    return {**header("gps", title, origin, "gps_train_scripts.csv (shared reference paper_settings)", recipe,
                     GPS_NOTES), "reported": GPS_REPORTED, "rows": rows}


# --- DTL (heekhero/DTL @bf6c51e, train_vit_vtab.py) ---

DTL_FIXED = {"weight_decay": "0.05", "batch_size": "32", "epochs": "100", "warmup_epochs": "10", "r": "2",
             "beta": "100.0", "lora_before_blocks": "0-11", "add_after_blocks": "6-11", "amp": "true",
             "batch_size_test": "256", "model": "vit_base_patch16_224_in21k", "prefetcher": "true"}
DTL_PLUS = "dtl:fusion=3"  # DTL+'s label: train_vit_vtab.py's default --fusion_size 3; each row sets its script's
DTL_DEPARTURES = [
    "schedule: timm's CosineLRScheduler steps per epoch (warm-up from 1e-7 over 10 epochs, cosine to 1e-8 over 100 "
    "epochs, then 10 more epochs at 1e-8: 110 in all); petlbench steps per batch over 100 epochs, warms up from lr "
    "x 1e-3 and decays to 0 (the last 10 epochs' lr of 1e-8 moves nothing that matters)",
    "--amp (fp16 autocast) there, petlbench's precision auto; --prefetcher and --batch_size_test change no number",
    "data: Resize (224, 224) + CenterCrop 224, bicubic, every epoch, mean/std 0.5, train800val200 -> test; "
    "petlbench decodes and resizes once (same filter) and keeps the last partial batch, which DTL's loader drops",
    "reported: train_vit_vtab.py tests once, after the last epoch; the one published number (V-PETL Bench's README "
    "DTL row, whose group mean 76.76 is DTL's README figure) is labelled test_best in results/published, so it is "
    "best_top1 here: compare with `table --report max-test` (test curve every 10 epochs) and, since the DTL code's "
    "own number would be its last epoch, also with the plain table; DTL+ has no published per-task number",
    "not converted: the scripts' few_shot (5 FGVC-fewshot datasets x 1-16 shots, 50 scripts) and "
    "domain_generalization (ImageNet -> its variants, 10) rows: a settings row has no shots, and their numbers are "
    "in figures only",
]
DTL_REPORTED = ("best_top1 (dtl rows): V-PETL Bench README's DTL row, labelled test_best in results/published; DTL's "
                "own code tests once after the last epoch, so if the row is DTL's paper number (its group mean "
                "matches) it is a last-epoch number; top1: none; dtl:fusion=3 (DTL+) rows: no number")
DTL_NOTES = {
    "dtl": "r -> rank, beta -> beta, --lora_before_blocks 0-11 -> read_from 0, --add_after_blocks 6-11 -> add_from's "
           "default (L / 2 = 6 of ViT-B's 12 blocks, to the last), --fusion_size 0 -> fusion 0; lr and drop_path "
           "per task; the mean-pooled head (pool avg) as DTL's ViT; --dataset: the suite's task; --model, "
           "--load_path: the recipe's backbone; " + VPETL,
    DTL_PLUS: "DTL+ (train_dtl+.sh): as dtl with --fusion_size k -> fusion k, each task's own kernel (3, 4 or 5; "
              "asked for as dtl:fusion=3, the code's default); no published per-task number",
}


def blocks(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last or first)


def dtl(reference: Path) -> dict[str, Any]:
    scripts = [s for s in reference_rows(reference / "dtl_train_scripts.csv") if s["benchmark"] == "vtab"]
    checked(scripts, DTL_FIXED)
    (read_from, last), (add_from, add_last) = (blocks(DTL_FIXED[c]) for c in ("lora_before_blocks", "add_after_blocks"))
    if last != 11 or add_last != 11 or add_from != 12 // 2:  # petlbench's dtl: to the last block; add_from L / 2
        raise ValueError(f"dtl: blocks {read_from}-{last} and {add_from}-{add_last}: expected ViT-B's x-11 and 6-11")
    top = published("vtab1k", "vpetl", "dtl")
    rows = []
    for s in sorted(scripts, key=lambda s: int(s["fusion_size"]) > 0):  # DTL's 19 rows, then DTL+'s
        task, fusion = SSF_TASKS.get(s["task"], s["task"]), int(s["fusion_size"])
        row = {"suite": "vtab1k", "task": task, "method": DTL_PLUS if fusion else "dtl",
               "options": {"rank": int(s["r"]), "beta": float(s["beta"]), "read_from": read_from, "fusion": fusion},
               "train": {"lr": float(s["lr"])}, "backbone_args": {"drop_path_rate": float(s["drop_path"])}}
        rows.append(row if fusion else {**row, "best_top1": top.get(task)})  # no published DTL+ row
    recipe = {"backbone": "vit_base_patch16_224.orig_in21k",  # README: imagenet21k/ViT-B_16.npz, --load_path
              "backbone_args": {"drop_path_rate": 0.0}, "mean": list(HALF), "std": list(HALF),
              "interpolation": "bicubic",
              "train": {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.05, "epochs": 100, "warmup_epochs": 10,
                        "batch_size": 32, "eval_batch_size": 256, "label_smoothing": 0.0, "lr_scale_batch": None,
                        "grad_clip": None, "eval_every": 10,
                        "decay_rule": "timm"},  # '*.bias' exempt: of DTL's trained tensors the head's bias, as timm's
              "departures": DTL_DEPARTURES}
    title = ("DTL (Fu, Zhu & Wu, AAAI 2024), per-task settings of its released VTAB-1k train scripts, DTL and DTL+ "
             "(19 tasks each); DTL's numbers of V-PETL Bench's README (labelled the best test epoch of one run)")
    origin = {"repository": "heekhero/DTL", "commit": "bf6c51e",
              "file": "train_scripts/vit/vtab/<task>/train_dtl{,+}.sh; recipe: train_vit_vtab.py, utils/utils.py, "
                      "data/vtab.py, models/vision_transformer.py; numbers: results/published row of source vpetl, "
                      "method dtl"}
    return {**header("dtl", title, origin, "dtl_train_scripts.csv (shared reference paper_settings)", recipe,
                     DTL_NOTES), "reported": DTL_REPORTED, "rows": rows}
