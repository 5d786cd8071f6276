"""E2VPT's released per-task commands (ChengHan111/E2VPT command.txt) -> the petlbench settings file `e2vpt`.

The "origin" commands name, per task, the prompt numbers (what the paper's table trained) and a config file whose
lr and weight decay the command's tuning script overwrites with its own val search: the prompt numbers are the
released settings, the config's lr/wd are the only per-task values released for training (said in the file).
The "Pruning and Rewind" commands give no percentages (their script searches them), the MAE and MoCo blocks need
self-supervised backbones: both stay out, with one line each in the notes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from petlbench.recipes import IMAGENET_MEAN, IMAGENET_STD
from petlbench.tools.paper_sources import header, published, reference_rows

ORIGIN = {"vtab1k": "Documented Version (Origin 5runs on VTAB-1k)", "fgvc": "Documented Version (Origin 5runs on FGVC)"}
PRUNING = {"vtab1k": "Documented Version (Pruning and Rewind on VTAB-1k)",
           "fgvc": "Documented Version (Pruning and Rewind on FGVC)"}
# the config file's stem (configs/prompt/prompt_test/...) -> the suite's task
TASKS = {"caltech101": "caltech101", "cifar100": "cifar", "dtd": "dtd", "oxford_flowers102": "oxford_flowers102",
         "oxford_iiit_pet": "oxford_iiit_pet", "sun397": "sun397", "svhn_cropped": "svhn",
         "diabetic_retinopathy_detection": "diabetic_retinopathy", "eurosat": "eurosat",
         "patch_camelyon": "patch_camelyon", "resisc45": "resisc45", "clevr_count": "clevr_count",
         "clevr_distance": "clevr_dist", "dmlab": "dmlab", "dsprites_location": "dsprites_loc",
         "dsprites_orientation": "dsprites_ori", "kitti_distance": "kitti", "smallnorb_azimuth": "smallnorb_azi",
         "smallnorb_evaluation": "smallnorb_ele",
         "cub": "CUB", "nabirds": "nabirds", "flowers": "OxfordFlowers", "dogs": "StanfordDogs", "cars": "StanfordCars"}
KV_INIT = {"0": "xavier", "1": "normal", "2": "kaiming"}  # MODEL.P_VK.ORIGIN_INIT
PROMPT_KEYS = ("MODEL.P_VK.NUM_TOKENS", "MODEL.P_VK.NUM_TOKENS_P", "MODEL.P_VK.SHARE_PARAM_KV",
               "MODEL.P_VK.ORIGIN_INIT", "MODEL.P_VK.DROPOUT_P", "SOLVER.BASE_LR", "SOLVER.WEIGHT_DECAY")

LRWD = ("lr and weight decay: the commands run tune_vtab_CVK.py (VTAB-1k: lr 10 values x batch/256, wd 4 values, "
        "trained on train800 and scored on val200; the final 5 runs on train800val200 with the best) and "
        "tune_fgvc.py (the same on FGVC's train/val), which overwrite the config's SOLVER.BASE_LR and WEIGHT_DECAY; "
        "the chosen values are not released. The rows carry the config files' values as the optimizer's lr "
        "(lr_scale_batch off, as train.py would use them): the number can differ from the paper's; "
        "`--protocol tune --methods e2vpt` runs the vpt recipe's search instead")


def options(c: dict[str, str]) -> dict[str, Any]:
    """The released prompt settings of one command as e2vpt's options."""
    for key, expected in (("MODEL.P_VK.DEEP", "True"), ("MODEL.P_VK.DEEP_P", "True"), ("MODEL.TYPE", "vit")):
        if c[key] != expected:
            raise ValueError(f"{c['task']}: {key} {c[key]!r}, expected {expected!r} (deep prompts on a supervised ViT)")
    if c["MODEL.P_VK.MASK_CLS_TOKEN"] not in ("", "False"):
        raise ValueError(f"{c['task']}: an origin command with MASK_CLS_TOKEN {c['MODEL.P_VK.MASK_CLS_TOKEN']!r}")
    return {"tokens": int(c["MODEL.P_VK.NUM_TOKENS_P"]), "kv_tokens": int(c["MODEL.P_VK.NUM_TOKENS"]),
            "share_kv": c["MODEL.P_VK.SHARE_PARAM_KV"] == "True", "kv_init": KV_INIT[c["MODEL.P_VK.ORIGIN_INIT"]],
            "dropout": float(c["MODEL.P_VK.DROPOUT_P"])}


def e2vpt(reference: Path) -> dict[str, Any]:
    commands = reference_rows(reference / "e2vpt_commands.csv")
    rows = []
    for suite in ("vtab1k", "fgvc"):
        origin = [c for c in commands if c["block"] == ORIGIN[suite]]
        pruning = {c["config_file"]: c for c in commands if c["block"] == PRUNING[suite]}
        top = published("fgvc", "davpt", "e2vpt", ("unknown",)) if suite == "fgvc" else {}
        for c in origin:
            same = pruning.get(c["config_file"])
            if same is None or any(same[k] != c[k] for k in PROMPT_KEYS):  # what the notes say of the pruning block
                raise ValueError(f"{c['task']}: the pruning-and-rewind command differs from the origin one")
            task = TASKS[Path(c["config_file"]).stem]
            train = {"lr": float(c["SOLVER.BASE_LR"]), "weight_decay": float(c["SOLVER.WEIGHT_DECAY"])}
            if int(c["DATA.BATCH_SIZE"]) != 64:
                train["batch_size"] = int(c["DATA.BATCH_SIZE"])
            row = {"suite": suite, "task": task, "method": "e2vpt", "options": options(c), "train": train,
                   "top1": top.get(task)}
            rows.append({k: v for k, v in row.items() if v is not None})
    recipe = {
        "backbone": "vit_base_patch16_224.orig_in21k",  # sup_vitb16_imagenet21k: Google's ViT-B_16 ImageNet-21k
        "backbone_args": {"drop_path_rate": 0.0},
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear",
        "train": {"optimizer": "sgd", "momentum": 0.9, "epochs": 100, "warmup_epochs": 10, "batch_size": 64,
                  "eval_batch_size": 512, "label_smoothing": 0.0, "lr_scale_batch": None, "grad_clip": None,
                  "decay_rule": "vpt"},  # configs/base-prompt_changed_P_VK.yaml; src/solver is VPT's
        "departures": [
            LRWD,
            "schedule: VPT's trainer (E2VPT's src/engine) steps its warm-up cosine once per epoch; petlbench steps "
            "per batch and warms up from lr x 1e-3",
            "seeds: E2VPT averages 5 final runs (seeds 42, 44, 82, 100, 800); `--seeds 42,44,82,100,800` runs the "
            "same seeds, not the same random streams",
            "data: VTAB-1k through VPT's TFDS pipeline (resize 224, ImageNet mean/std): a tfds-png data root "
            "(`petlbench data build vtab1k --from tfds`) matches it, a noah-jpeg one does not; FGVC: VPT's json "
            "splits and preprocessing, as the fgvc suite",
        ],
    }
    notes = {"e2vpt": "NUM_TOKENS_P -> tokens, NUM_TOKENS -> kv_tokens, SHARE_PARAM_KV -> share_kv, ORIGIN_INIT "
                      "0/1/2 -> kv_init xavier/normal/kaiming, DROPOUT_P -> dropout, DATA.BATCH_SIZE -> batch_size; "
                      "DEEP and DEEP_P True, TRANSFER_TYPE P_VK and MODEL.TYPE vit are e2vpt on the supervised ViT, "
                      "MASK_CLS_TOKEN False no pruning (prune_tokens 0). No counterpart: the val search of lr and wd "
                      "and the 5-seed mean (see departures; they can change the number). Left out: the 'Pruning and Rewind' "
                      "commands (the same prompt numbers and configs, no percentages: tune_vtab_PruningRewind_CVK.py "
                      "searches 81 pairs on val200, the chosen ones are not released; run "
                      "e2vpt:prune_tokens=P:prune_pieces=Q yourself) and the 'ssl mae' / 'ssl moco' blocks "
                      "(MAE and MoCo v3 ViT-B backbones, which petlbench does not ship)"}
    title = ("E2VPT (Han et al., ICCV 2023), per-task prompt numbers of its released 'origin' commands (19 VTAB-1k, "
             "5 FGVC) with lr and wd of the configs they name (the commands tune those on val)")
    origin = {"repository": "ChengHan111/E2VPT", "commit": "7a66e75",
              "file": "command.txt ('Documented Version (Origin 5runs ...)'), configs/prompt/prompt_test/*; recipe: "
                      "configs/base-prompt_changed_P_VK.yaml, tune_vtab_CVK.py, get_results_vtab.py; numbers: "
                      "results/published row of source davpt, method e2vpt (FGVC)"}
    settings = header("e2vpt", title, origin, "e2vpt_commands.csv (shared reference paper_settings)", recipe, notes)
    settings.update(
        selection="val_last",
        reported="top1: E2VPT's mean of 5 final runs' last-epoch test top-1 with lr/wd chosen on val "
                 "(get_results_vtab.py: is_last), FGVC only, second-hand (results/published source davpt, DA-VPT "
                 "Table 3, labelled selection unknown there; mean 89.22 as E2VPT's); VTAB-1k: no per-task numbers in "
                 "the files read; best_top1: none")
    return {**settings, "rows": rows}
