"""The converters of SSF, FacT and Convpass (their released per-task settings -> petlbench settings files).

Each reads a transcription of the official training scripts or configs (REFERENCE_DIR) and takes the numbers it
compares with from petlbench's published tables (`results/published/`), so the shipped file follows both. All three
sources report the best test epoch of one run (test evaluated periodically, the best kept): their numbers go into
`best_top1` (compared by `table --report max-test`) and `top1` stays empty, as none of them gives a last epoch.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

CONVERTER = "petlbench/tools/paper_settings.py"
PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "published"  # published_vtab1k.csv, published_fgvc.csv

# the sources' task names -> the suites' (vtab1k.yaml, fgvc.yaml); the published tables' FGVC columns -> the suite's
SSF_TASKS = {"cifar_100": "cifar", "flowers102": "oxford_flowers102", "pets": "oxford_iiit_pet",
             "cub_2011": "CUB", "oxford_flowers": "OxfordFlowers", "stanford_cars": "StanfordCars",
             "stanford_dogs": "StanfordDogs"}
FGVC_COLUMNS = {"cub": "CUB", "nabirds": "nabirds", "oxford_flowers": "OxfordFlowers", "stanford_dogs": "StanfordDogs",
                "stanford_cars": "StanfordCars"}
JIE_SCHEDULE = ("schedule: the script steps timm's CosineLRScheduler per epoch (warm-up from 1e-6 over 10 epochs, "
                "cosine to lr_min 1e-5); petlbench steps per batch, warms up from lr x 1e-3 and decays to 0")
JIE_DATA = ("data: the script resizes each NOAH JPEG with torchvision (bicubic, 224x224) every epoch and drops the "
            "last partial batch; petlbench decodes and resizes once (same filter) and keeps it")
JIE_SELECTION = ("reported: the script tests every 10 epochs and prints the best (selected on test); petlbench's "
                 "number is the last epoch, its test curve every 10 epochs (recipe eval_every 10) gives "
                 "`table --report max-test`")


def number(text: str) -> Any:
    """'0.001' -> 0.001, '16' -> 16, 'True' -> True; '' -> None."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def reference_rows(path: Path) -> list[dict[str, str]]:
    """A reference CSV's rows (its '#' lines name the source and are skipped)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def published(suite: str, source_key: str, method: str, selections: tuple = ("test_best",)) -> dict[str, float]:
    """Task -> the test top-1 of the one row of (source_key, method) in results/published/published_<suite>.csv."""
    name = {"vtab1k": "published_vtab1k.csv", "fgvc": "published_fgvc.csv"}[suite]
    with (PUBLISHED / name).open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if r["source_key"] == source_key and r["method"] == method]
    if len(rows) != 1 or rows[0]["selection"] not in selections:
        raise ValueError(f"{name}: expected one {'/'.join(selections)} row of {method} from {source_key}, got "
                         f"{len(rows)}")
    tasks = header[header.index("backbone") + 1:header.index("trainable_params_M")]  # the task columns
    return {FGVC_COLUMNS.get(t, t): float(rows[0][t]) for t in tasks if rows[0][t]}


def constant(rows: list[dict[str, str]], column: str) -> str:
    """A script argument the recipe holds: the same in every row, or the transcription is not what we read."""
    values = {r[column] for r in rows}
    if len(values) != 1:
        raise ValueError(f"column {column!r} differs between tasks: {sorted(values)}")
    return values.pop()


def header(source: str, title: str, origin: dict, converted: str, recipe: dict, notes: dict) -> dict[str, Any]:
    return {"source": source, "title": title, "origin": origin, "converted": {"from": converted, "by": CONVERTER},
            "selection": "test_best",
            "reported": "best_top1: the source's best test epoch of its one run (selected on test); top1: none (the "
                        "source gives no last-epoch number)",
            "recipe": recipe, "notes": notes}


def ssf(reference: Path) -> dict[str, Any]:
    scripts = reference_rows(reference / "ssf_train_scripts.csv")
    gpus, batch = int(constant(scripts, "nproc_per_node")), int(constant(scripts, "batch-size"))
    train = {"optimizer": constant(scripts, "opt"), "epochs": int(constant(scripts, "epochs")),
             "warmup_epochs": int(constant(scripts, "warmup-epochs")), "batch_size": gpus * batch,
             "eval_batch_size": 512, "label_smoothing": 0.0, "lr_scale_batch": None, "grad_clip": None,
             "eval_every": 10, "decay_rule": "timm"}  # SSF's timm optimizer factory
    rows = []
    for suite, bench in (("vtab1k", "vtab"), ("fgvc", "fgvc")):
        top = published(suite, "ssf", "ssf")
        for s in (r for r in scripts if r["benchmark"] == bench):
            task = SSF_TASKS.get(s["task"], s["task"])
            row_train = {"lr": float(s["lr"]), "weight_decay": float(s["weight-decay"])}
            if bench == "fgvc":  # no --smoothing: timm's default 0.1 (inside its mixup targets)
                row_train["label_smoothing"] = 0.1
            rows.append({"suite": suite, "task": task, "method": "ssf", "train": row_train,
                         "backbone_args": {"drop_path_rate": float(s["drop-path"])}, "best_top1": top.get(task)})
    recipe = {
        "backbone": "vit_base_patch16_224.augreg_in21k",  # SSF's vit_base_patch16_224_in21k: the augreg B_16-i21k npz
        "backbone_args": {"drop_path_rate": 0.0},
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "train": train,
        "departures": [
            "schedule: SSF's timm CosineLRScheduler steps per epoch (warm-up from 1e-7 over 10 epochs, cosine to "
            "min-lr 1e-8); petlbench steps per batch, warms up from lr x 1e-3 and decays to 0",
            f"batch: SSF runs {gpus} GPUs x {batch} (torch.distributed, lr not scaled): petlbench one batch of "
            f"{gpus * batch}; --amp (fp16) there, petlbench's precision auto",
            "weight decay: SSF's timm optimizer factory exempts biases and 1-d tensors, as petlbench does (its "
            "scale and shift vectors included)",
            "vtab1k: --no-aug --direct-resize, mixup 0, cutmix 0, smoothing 0: the same as petlbench's suite "
            "(resize to 224x224, bicubic, no augmentation)",
            "fgvc: SSF trains with --simple-aug (RandomResizedCrop 224, scale 0.08-1, + flip), timm's default mixup "
            "0.8 / cutmix 1.0 with smoothing 0.1, and --model-ema (decay 0.9998 or 0.999, the EMA weights "
            "evaluated), tests with timm's eval crop (crop_pct 0.9); petlbench has no mixup, cutmix or EMA and uses "
            "the fgvc suite's preprocessing (resize 256, random crop 224 + flip; center crop) with smoothing 0.1",
            "reported: SSF evaluates the test set every epoch and keeps the best top-1 (selected on test); "
            "petlbench's number is the last epoch, its test curve every 10 epochs (recipe eval_every 10; "
            "--train eval_every=1 for SSF's) gives `table --report max-test`",
        ],
    }
    notes = {"ssf": "SSF's scale N(1, 0.02) and shift N(0, 0.02) after every linear and norm layer, as petlbench's ssf"}
    title = ("SSF (Lian et al., NeurIPS 2022), per-task settings of its released train scripts; the numbers of its "
             "Table 4 (VTAB-1k) and FGVC table, the best test epoch of one run")
    origin = {"repository": "dongzelian/SSF", "commit": "e94e0e7",
              "file": "train_scripts/vit/{vtab,fgvc}/<task>/train_ssf.sh; recipe: train.py, data/transforms_factory.py"
                      ", models/vision_transformer.py; numbers: results/published rows of source ssf, method ssf"}
    return {**header("ssf", title, origin, "ssf_train_scripts.csv (shared reference paper_settings)", recipe, notes),
            "rows": rows}


def jie_recipe() -> dict[str, Any]:
    """FacT's and Convpass's scripts (JieShibo/PETL-ViT) share one recipe."""
    return {"backbone": "vit_base_patch16_224.orig_in21k",  # ViT-B_16.npz, Google's original ImageNet-21k weights
            "backbone_args": {"drop_path_rate": 0.1},
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
            "train": {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001, "epochs": 100, "warmup_epochs": 10,
                      "batch_size": 64, "eval_batch_size": 256, "label_smoothing": 0.0, "lr_scale_batch": None,
                      "grad_clip": None, "eval_every": 10, "decay_rule": "all"},  # AdamW(every trainable tensor)
            "departures": [JIE_SCHEDULE, JIE_DATA, JIE_SELECTION]}


def fact(reference: Path) -> dict[str, Any]:
    rows = []
    for variant, label in (("tk", "fact"), ("tt", "fact:variant=tt")):
        top = published("vtab1k", "fact", label)
        for c in (r for r in reference_rows(reference / "fact_configs.csv") if r["variant"] == variant):
            rows.append({"suite": "vtab1k", "task": c["task"], "method": label,
                         "options": {"rank": number(c["rank"]), "scale": number(c["scale"])},
                         "best_top1": top.get(c["task"])})
    notes = {"fact": "FacT-TK (fact_tk.py, configs/tk): rank = dim, scale = s, dropout 0.1",
             "fact:variant=tt": "FacT-TT (fact_tt.py, configs/tt): rank = dim, scale = s, dropout 0.1; its numbers "
                                "are FacT Table 1 as reprinted by DyT and GOFT (results/published)"}
    title = ("FacT (Jie & Deng, AAAI 2023), per-task rank and scale of its released configs; FacT-TK r<=32 and "
             "FacT-TT r<=16, the best test epoch of one run (seed 42)")
    origin = {"repository": "JieShibo/PETL-ViT", "commit": "026e4f1",
              "file": "FacT/configs/{tk,tt}/<task>.yaml; recipe: FacT/fact_tk.py, fact_tt.py, vtab.py, run.sh; "
                      "numbers: results/published rows of source fact (fact, fact:variant=tt)"}
    return {**header("fact", title, origin, "fact_configs.csv (shared reference paper_settings)", jie_recipe(),
                     notes), "rows": rows}


def convpass(reference: Path) -> dict[str, Any]:
    rows = []
    for variant, label, published_label in (("convpass", "convpass", "convpass"),
                                            ("convpass_attn", "convpass_attn", "convpass:placement=attn")):
        top = published("vtab1k", "convpass_readme", published_label)
        for c in (r for r in reference_rows(reference / "convpass_configs.csv") if r["variant"] == variant):
            options = {"dim": 8, "scale": float(c["scale"]), "conv_init": "xavier" if number(c["xavier_init"])
                       else "identity"}
            rows.append({"suite": "vtab1k", "task": c["task"], "method": label, "options": options,
                         "best_top1": top.get(c["task"])})
    notes = {"convpass": "Convpass (train.py --method convpass): bypasses beside attention and MLP, dim 8, scale s; "
                         "xavier_init true -> conv_init xavier, false -> identity",
             "convpass_attn": "Convpass_attn (bypass beside attention only): petlbench has no such method, refused "
                              "when asked for (results/published labels it convpass:placement=attn)"}
    title = ("Convpass (Jie & Deng, arXiv 2207.07039), per-task scale and conv init of its released configs; the "
             "README's numbers (seed 42), the best test epoch of one run")
    origin = {"repository": "JieShibo/PETL-ViT", "commit": "026e4f1",
              "file": "convpass/vtab/configs/{convpass,convpass_attn}/<task>.yaml; recipe: convpass/vtab/train.py, "
                      "convpass.py, vtab.py, run.sh; numbers: results/published rows of source convpass_readme"}
    return {**header("convpass", title, origin, "convpass_configs.csv (shared reference paper_settings)",
                     jie_recipe(), notes), "rows": rows}
