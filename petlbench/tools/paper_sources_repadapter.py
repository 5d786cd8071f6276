"""RepAdapter's released per-task configs (luogen1996/RepAdapter configs/{repblock,repattn}/<task>.yaml) -> the
settings file `repadapter`.

A config holds one argument, the scale s (and the class count, the suite's); everything else is train.py's
default, which is FacT's and Convpass's recipe (`jie_recipe`). repblock is petlbench's `repadapter`, repattn
`repadapter:placement=attn`. The `repblock_few_shot` configs stay out: a settings row has no shot count. The
number compared with is the RepAdapter row of results/published (V-PETL Bench's README, source key `vpetl`, the row
later papers cite as RepAdapter's, test_best: train.py keeps the best of its every-10-epoch tests); repattn has none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from petlbench.tools.paper_sources import constant, header, jie_recipe, published, reference_rows

VARIANTS = {"repblock": "repadapter", "repattn": "repadapter:placement=attn"}  # train.py --method -> label
DIM = 8  # scripts/train_{repblock,repattn}.sh: --dim 8 (train.py's default too)
NOT_RELEASED = {"repblock_few_shot"}  # 5 FGVC-fewshot configs (scale 1): train.py --few-shot --shots K

DEPARTURES = [
    "seed: train.py's default --seed 42 (one run); run `--seeds 42` for the same seed (not the same draws)",
    "schedule detail: train.py calls scheduler.step(ep) after epoch ep, so each epoch runs at the previous "
    "epoch's lr (epochs 0 and 1 both at 1e-6); part of the per-epoch schedule listed above",
    "backbone: train.py builds timm's vit_base_patch16_224_in21k from ViT-B_16.npz (Google's original ImageNet-21k "
    "weights: orig_in21k); its block forward uses Block.drop_path1 (timm 0.6 on), whose model has no pre-logits "
    "layer, as petlbench's; that forward draws the MLP branch's stochastic depth from drop_path1 too (the same "
    "rate, so the same distribution)",
    "trained tensors: train.py trains every parameter whose name holds 'adapter' or 'head' (the adapters and the "
    "new head), as petlbench's repadapter marks them; AdamW's weight decay on all of them (decay_rule all)",
    "not converted: configs/repblock_few_shot (fgvc_aircraft, food101, oxford_flowers102, oxford_pets, "
    "standford_cars; scale 1; train.py --few-shot --shots K, with mixup/cutmix and RandAugment): a settings row has "
    "no shot count",
]
REPORTED = ("best_top1 (repadapter rows): the RepAdapter row of V-PETL Bench's README (results/published, source "
            "vpetl, test_best), the row later papers cite as RepAdapter's (its paper's table was not read); "
            "train.py tests every 10 epochs and keeps the best (selected on test); top1: none; "
            "repadapter:placement=attn (repattn) rows: no published per-task number")
MAPPED = ("--dim 8 -> bottleneck 8; the config's scale -> scale (train.py's --scale 0 takes the config's); "
          "RepAdapter's class constants groups 2 (conv_B) and dropout 0.1 are petlbench's defaults, as its Xavier "
          "A / zero B init; --model vit_base_patch16_224_in21k + ViT-B_16.npz -> the recipe's backbone; class_num: "
          "the suite's task; lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, drop-path 0.1, ImageNet mean/std, "
          "bicubic 224x224 -> the recipe. No counterpart: the per-epoch schedule (warm-up from 1e-6, to lr_min 1e-5, "
          "one epoch late) and the last partial batch it drops (small effects), the seed (42 there) and the "
          "best-of-test selection (`table --report max-test`): see departures")
NOTES = {
    "repadapter": "repblock (train.py --method repblock): adapters before attention and MLP; " + MAPPED,
    "repadapter:placement=attn": "repattn (train.py --method repattn): an adapter before attention only -> "
                                 "placement attn; otherwise as repadapter; no published per-task number",
}


def repadapter(reference: Path) -> dict[str, Any]:
    configs = reference_rows(reference / "repadapter_configs.csv")
    if {c["variant"] for c in configs} != set(VARIANTS) | NOT_RELEASED:
        raise ValueError(f"repadapter_configs.csv: variants {sorted({c['variant'] for c in configs})}")
    constant([c for c in configs if c["variant"] in NOT_RELEASED], "scale")  # the few-shot ones: one scale (1)
    top = published("vtab1k", "vpetl", "repadapter")
    rows = []
    for variant, label in VARIANTS.items():
        for c in sorted((c for c in configs if c["variant"] == variant), key=lambda c: c["task"]):
            row = {"suite": "vtab1k", "task": c["task"], "method": label,
                   "options": {"bottleneck": DIM, "scale": float(c["scale"])}}
            rows.append({**row, "best_top1": top.get(c["task"])} if variant == "repblock" else row)
    recipe = jie_recipe()
    recipe["departures"] = [*recipe["departures"], *DEPARTURES]
    title = ("RepAdapter (Luo et al., arXiv 2302.08106), per-task scale of its released VTAB-1k configs, repblock "
             "and repattn (19 tasks each; the few-shot configs left out); repblock's numbers of V-PETL Bench's README "
             "(the best test epoch of one run)")
    origin = {"repository": "luogen1996/RepAdapter", "commit": "360992f",
              "file": "configs/{repblock,repattn}/<task>.yaml; recipe: train.py, dataset.py, utils.py, repadapter.py, "
                      "scripts/train_{repblock,repattn}.sh; numbers: results/published row of source vpetl, method "
                      "repadapter"}
    return {**header("repadapter", title, origin, "repadapter_configs.csv (shared reference paper_settings)", recipe,
                     NOTES), "reported": REPORTED, "rows": rows}
