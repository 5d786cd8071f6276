"""Published few-shot numbers (results/published/published_fewshot.csv) beside the user's `--shots K` rows.

The file is long: one row per (method, backbone, dataset, shots) with its source and selection rule. A published
row is shown when one of your few-shot rows has a task whose name or alias is its dataset, the same backbone
(exact timm name, or the same architecture and pretraining data: petlbench.report.published.match) and the same K.
Every published method at that (dataset, backbone, K) is shown, as the few-shot papers set them side by side; the
zero-shot rows (K = 0, no training image) come along as the baseline. Labels give method, source, rule and K.
Those numbers were measured on CoOp's splits (`split_zhou_<Name>.json`); rows of another layout get a ⚠ note.
"""
from __future__ import annotations

import pandas as pd

from petlbench.errors import UserError
from petlbench.report.published import TEST_SELECTED, match, published_dir
from petlbench.report.sources import citation, normalise
from petlbench.report.summary import Stats, SuiteInfo, aggregate

FILE = "published_fewshot.csv"
SPLIT_LAYOUT = "coop"  # the layout whose splits the published numbers used
METHOD_NAMES = {"zero_shot_clip": "zeroshot"}  # the file's names -> petlbench's
# open_clip model names (`--backbone clip:<name>`, with `pretrained=<tag>` in its args) -> the file's timm names
OPEN_CLIP = {"RN50": "resnet50_clip", "RN101": "resnet101_clip", "ViT-B-32": "vit_base_patch32_clip_224",
             "ViT-B-16": "vit_base_patch16_clip_224", "ViT-L-14": "vit_large_patch14_clip_224",
             "RN50x4": "resnet50x4_clip", "RN50x16": "resnet50x16_clip", "RN50x64": "resnet50x64_clip"}


def timm_name(backbone: dict) -> str:
    """A record's backbone as the file names it: a timm name is itself; `clip:ViT-B-16` with pretrained=openai is
    `vit_base_patch16_clip_224.openai`."""
    name = str(backbone.get("name") or "")
    if not name.startswith("clip:"):
        return name
    arch = OPEN_CLIP.get(name.removeprefix("clip:"), name)
    tag = (backbone.get("args") or {}).get("pretrained")
    return f"{arch}.{tag}" if tag else arch


def load() -> pd.DataFrame | None:
    folder = published_dir()
    path = folder / FILE if folder else None
    if path is None or not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"method": str, "backbone": str, "dataset": str, "source": str,
                                         "selection": str, "source_key": str})
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("method", "backbone", "dataset", "shots", "top1") if c not in table.columns]
    if missing:
        raise UserError(f"{path}: column {missing[0]!r} is missing; expected method, backbone, dataset, shots, top1")
    return normalise(table)


def label(row: pd.Series) -> str:
    """'published: tip_adapter [tip_adapter (val_last), 16-shot]' (†: selected on the test set)."""
    method = METHOD_NAMES.get(row["method"], row["method"])
    return (f"published: {method} [{row['source_key']} ({row['selection']}), {int(row['shots'])}-shot]"
            + (f" {TEST_SELECTED}" if row["selection"] == "test_best" else ""))


def beside(records: list[dict], info: SuiteInfo, mode: str = "auto") -> tuple[Stats | None, list[str]]:
    """The published few-shot rows matching this suite's few-shot records, and the notes they need."""
    runs = [r for r in records if r.get("status") == "success" and (r.get("protocol") or {}).get("shots")
            and (r.get("protocol") or {}).get("stage") != "search" and r.get("suite") == info.name]
    if mode == "never" or not runs:
        return None, []
    table = load()
    if table is not None and "setting" in table:  # base-to-new rows go beside base-to-new runs (report.base2new)
        table = table[table["setting"] != "base-to-new"]
    if table is None or table.empty:
        return None, []
    task_of = {t: t for t in info.tasks}
    if info.suite is not None:
        task_of.update({a: t.name for t in info.suite.tasks for a in t.aliases})
    wanted = {(r["task"], timm_name(r["backbone"]), r["backbone"].get("weights"), r["protocol"]["shots"]) for r in runs}
    keep = []
    for i, row in table.iterrows():
        task = task_of.get(row["dataset"])
        hit = [w for w in wanted if w[0] == task and match(w[1], w[2] or "", row["backbone"])
               and (int(row["shots"]) in (0, w[3]) or mode == "always")]
        if task is not None and hit:
            keep.append((i, task))
    if not keep:
        return None, []
    rows = [{"method": label(table.loc[i]), "backbone": f"{table.loc[i, 'backbone']} (published)",
             "method_name": table.loc[i, "method"], "task": task, "seed": float("nan"),
             "top1": float(table.loc[i, "top1"]), "trainable_excl_head": float("nan"),
             "backbone_params": float("nan")} for i, task in keep]
    stats = aggregate(pd.DataFrame(rows), info)
    stats.seeds[:] = ""
    shown = table.loc[[i for i, _ in keep]]
    notes = [f"published few-shot ({FILE}; test top-1 %; each row: method [source (selection rule), shots], shown "
             "where one of your few-shot rows has its dataset, backbone and shots; 0-shot: zero-shot CLIP): "
             + "; ".join(f"{r['source_key']} = {citation(r)}"
                         for _, r in shown.drop_duplicates("source_key").iterrows())]
    layouts = sorted({str((r.get("data") or {}).get("layout")) for r in runs} - {SPLIT_LAYOUT})
    if layouts:
        notes.append(f"⚠ published few-shot numbers use CoOp's splits (split_zhou_*.json, layout {SPLIT_LAYOUT}); "
                     f"your few-shot runs use the {', '.join(layouts)} layout: other train and test images")
    return stats, notes
