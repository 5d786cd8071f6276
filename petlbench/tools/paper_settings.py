"""Convert the per-task settings that papers released into petlbench settings files (benchmarks/settings/*.yaml).

    python -m petlbench.tools.paper_settings REFERENCE_DIR [OUT_DIR]

REFERENCE_DIR holds the transcribed files (`petl_vision_best_tune.csv`, `ssf_train_scripts.csv`, `fact_configs.csv`,
`convpass_configs.csv`; a copy is in tests/data/paper_settings); SSF's, FacT's and Convpass's numbers come from
results/published/ (petlbench/tools/paper_sources.py). The shipped files are this script's output, and
tests/test_paper_protocol.py checks that they still are. GPS's and DTL's (`gps_train_scripts.csv`,
`dtl_train_scripts.csv`) are converted by petlbench/tools/paper_sources_gps_dtl.py.
E2VPT's (`e2vpt_commands.csv`) and SNELL's (`snell_train_scripts.csv`) converters are paper_sources_e2vpt.py and
paper_sources_snell.py (tests/test_paper_sources_e2vpt_snell.py); RepAdapter's (`repadapter_configs.csv`)
paper_sources_repadapter.py (tests/test_paper_sources_repadapter.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from petlbench.records import replaced_whole
from petlbench.tools.noah_subnets import paper_source as noah
from petlbench.tools.paper_sources import CONVERTER, convpass, fact, number, reference_rows, ssf
from petlbench.tools.paper_sources_gps_dtl import dtl, gps
from petlbench.tools.paper_sources_e2vpt import e2vpt
from petlbench.tools.paper_sources_snell import snell
from petlbench.tools.paper_sources_repadapter import repadapter

# PETL_Vision folder name -> (petlbench method label, {petlbench option: PETL_Vision column}, fixed options)
PETL_VISION = {
    "adaptformer": ("adaptformer", {"bottleneck": "adapter_bottleneck", "scale": "adapter_scaler"}, {}),
    "bitfit": ("bitfit", {}, {}),
    "convpass": ("convpass", {"dim": "convpass_bottleneck", "scale": "convpass_scaler",
                              "conv_init": "convpass_xavier_init"}, {}),
    "difffit": ("difffit", {}, {}),
    "fact_tk": ("fact", {"rank": "fact_dim", "scale": "fact_scaler"}, {}),
    "fact_tt": ("fact:variant=tt", {"rank": "fact_dim", "scale": "fact_scaler"}, {}),
    "full": ("full", {}, {}),
    "linear": ("linear", {}, {}),
    "ln": ("ln", {}, {}),
    "lora": ("lora", {"rank": "lora_bottleneck", "alpha": "lora_bottleneck"}, {"targets": ["q", "k", "v"],
                                                                             "dropout": 0.1}),
    "lora_p_adapter": ("adapter:init=zeros", {"bottleneck": "adapter_bottleneck", "scale": "adapter_scaler"},
                       {"act": "relu", "drop_path_order": "twice"}),
    "rand_h_adapter": ("adapter:placement=both", {"bottleneck": "adapter_bottleneck", "scale": "adapter_scaler"},
                       {"act": "relu", "drop_path_order": "twice"}),
    "repadapter": ("repadapter", {"bottleneck": "repadapter_bottleneck", "scale": "repadapter_scaler"}, {}),
    "ssf": ("ssf", {}, {}),
    "vpt_deep": ("vpt_deep", {"tokens": "vpt_num"}, {}),
    "vpt_shallow": ("vpt_shallow", {"tokens": "vpt_num"}, {"dropout": 0.1}),
}

PETL_VISION_HEADER = {
    "source": "petl_vision",
    "title": "PETL_Vision (Mai et al., CVPR 2025), hyper-parameters selected on val200 per task (best_tune), "
             "one final run (seed 42) on train800val200",
    "origin": {"repository": "OSU-MLB/PETL_Vision", "commit": "245d262",
               "file": "tune_output/default_vtab/processed_vtab/<task>/<method>/final_result.json (best_tune, "
                       "avg_acc, avg_best_acc); recipe: experiment/config/default_vtab_processed.yml, "
                       "engine/trainer.py, engine/optimizer.py, data/dataset/vtab_processed.py"},
    "converted": {"from": "petl_vision_best_tune.csv (shared reference paper_settings, experiment default_vtab)",
                  "by": CONVERTER},
    "selection": "val_last",
    "reported": "top1: last-epoch test top-1 of the final run (avg_acc); best_top1: its best test epoch "
                "(avg_best_acc, selected on test)",
    "recipe": {
        "backbone": "vit_base_patch16_224.orig_in21k",  # ViT-B_16_in21k.npz, Google's original weights
        "backbone_args": {"drop_path_rate": 0.1},
        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],  # normalized: false: ToTensor only, inputs in [0, 1]
        "interpolation": "bicubic",
        "train": {"optimizer": "adamw", "epochs": 100, "warmup_epochs": 10, "batch_size": 64,
                  "eval_batch_size": 512, "label_smoothing": 0.0, "lr_scale_batch": None, "grad_clip": None,
                  "decay_rule": "all"},  # engine/optimizer.py: AdamW over every trainable tensor
        "departures": [
            "schedule: PETL_Vision steps timm's CosineLRScheduler per epoch (warm-up from 1e-6 over 10 epochs, "
            "cosine to lr_min 1e-5); petlbench steps per batch, warms up from lr x 1e-3 and decays to 0",
            "data: PETL_Vision resizes each JPEG with PIL (bicubic, 224x224) every epoch; petlbench decodes and "
            "resizes once (same filter), so pixels may differ by rounding",
        ],
    },
    "notes": {
        "lora": "PETL_Vision's LoRA has one down-projection shared by q, k and v (12 x r x 3072 parameters) with "
                "dropout 0.1 on its input and no scaling; petlbench's (peft) has one per target (12 x r x 4608), "
                "alpha = rank keeps the scale 1",
        "adapter:init=zeros": "PETL_Vision lora_p_adapter: sequential adapter after the MLP, LoRA-style init "
                              "(Xavier down, zero up-projection and biases: lora_xavier), ReLU, dropout 0.1, the "
                              "branch's drop-path before and after the adapter (model/block.py sequential_after)",
        "adapter:placement=both": "PETL_Vision rand_h_adapter: sequential adapters after attention and MLP, "
                                  "Xavier init, ReLU, dropout 0.1, drop-path before and after each adapter",
        "convpass": "convpass_xavier_init true -> conv_init xavier, false -> identity",
        "difffit": "PETL_Vision's DiffFit (biases, norms, per-block gammas at 1; no options): petlbench difffit",
        "repadapter": "repadapter_bottleneck -> bottleneck, repadapter_scaler -> scale; PETL_Vision's repadapter_group "
                      "(2), dropout (0.1) and lora_xavier init are petlbench's defaults",
    },
}


def petl_vision(reference: Path) -> dict[str, Any]:
    rows = []
    for r in reference_rows(reference / "petl_vision_best_tune.csv"):
        if r["experiment"] != "default_vtab" or r["task"] == "cifar_aug_norm":  # not VTAB-1k's cifar split
            continue
        label, columns, fixed = PETL_VISION[r["source_method"]]
        options = {**{k: number(r[c]) for k, c in columns.items()}, **fixed}
        if "conv_init" in options:
            options["conv_init"] = "xavier" if options["conv_init"] else "identity"
        row = {"suite": "vtab1k", "task": r["task"], "method": label, "options": options,
               "train": {"lr": number(r["lr"]), "weight_decay": number(r["wd"])}}
        if r["drop_path_rate"]:
            row["backbone_args"] = {"drop_path_rate": number(r["drop_path_rate"])}
        row.update(top1=number(r["final_test_top1"]), best_top1=number(r["best_epoch_test_top1"]))
        rows.append({k: v for k, v in row.items() if v != {}})
    return {**PETL_VISION_HEADER, "rows": rows}


SOURCES = {"petl_vision": petl_vision, "ssf": ssf, "fact": fact, "convpass": convpass, "noah": noah}
SOURCES["gps"] = gps  # gps_train_scripts.csv (petlbench/tools/paper_sources_gps_dtl.py)
SOURCES["dtl"] = dtl  # dtl_train_scripts.csv (same module)
SOURCES["e2vpt"] = e2vpt  # E2VPT's command.txt (petlbench/tools/paper_sources_e2vpt.py)
SOURCES["snell"] = snell  # SNELL's train scripts (petlbench/tools/paper_sources_snell.py)
SOURCES["repadapter"] = repadapter  # RepAdapter's configs (petlbench/tools/paper_sources_repadapter.py)


def dump(settings: dict[str, Any]) -> str:
    """The header as block YAML, each row on one line (a file a reader can scan and diff)."""
    header = {k: v for k, v in settings.items() if k != "rows"}
    text = yaml.safe_dump(header, sort_keys=False, width=110, allow_unicode=True)
    rows = [yaml.safe_dump(r, sort_keys=False, default_flow_style=True, width=10**6).strip() for r in settings["rows"]]
    return (f"# Generated by {CONVERTER} from the reference files; do not edit by hand.\n" + text + "rows:\n"
            + "".join(f"  - {r}\n" for r in rows))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    reference = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "benchmarks" / "settings"
    for name, convert in SOURCES.items():
        path = out / f"{name}.yaml"
        with replaced_whole(path) as tmp:
            tmp.write_text(dump(convert(reference)), encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
