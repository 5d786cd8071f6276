"""From a run's record back to a working model: `eval` (reproduce its test accuracy), `predict` (top
classes of image files, what a user of a deployed task runs) and `export --merged` (a plain timm state
dict for methods that fold into the backbone's weights).

The record holds everything needed: the suite file, the task, the method and its options, the backbone
(name, arguments, weights or checkpoint with its sha256), the preprocessing, the seed; the task's own
tensors sit beside it (petlbench.weights), checked against the sha256 the record holds before any use.
`export` never writes over a run's record, weights or a file the record names: one typo must not destroy a run.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from petlbench.backbone import BackboneSpec, create_backbone, file_sha256
from petlbench.data.decode import SplitCache, TensorData, decode, stored_size
from petlbench.errors import UserError
from petlbench.data.layouts import fgvc_class_ids, find_task_dir
from petlbench.options import build
from petlbench.outputs import check_output_file
from petlbench.params import build_model
from petlbench.plan import RunPlan, rebuilt_train
from petlbench.recipes import RECIPES, Recipe
from petlbench.records import MISSING, lookup, metric_of, parse_record, read_record
from petlbench.registry import get_method
from petlbench.suite import load_suite
from petlbench.engine.train import evaluate
from petlbench.weights import load_task, same_architecture, weights_path, weights_problem, write_safetensors


@dataclass
class Deployed:
    record: dict[str, Any]
    plan: RunPlan
    model: nn.Module
    prep: dict[str, Any]


def read(record_path: str | Path) -> dict[str, Any]:
    path = Path(record_path)
    try:
        record = parse_record(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable run record ({exc.strerror if isinstance(exc, OSError) else exc})") \
            from None
    if record is None or record.get("status") != "success":
        raise UserError(f"{path}: not a successful run record")
    if (record.get("protocol") or {}).get("stage") == "search":
        raise UserError(f"{path}: a tuning (search) run; its weights are not kept, use a final run's record")
    for keys, expected in REBUILD_KEYS:
        value = lookup(record, keys)
        if not isinstance(value, expected):
            found = "missing" if value is MISSING else f"{value!r:.60}"
            raise UserError(f"{path}: a damaged run record: the key {'.'.join(keys)} is {found}, expected "
                            f"{'a mapping' if expected is dict else 'a string'} (to rebuild the run)")
    return record


# What rebuild reads beyond what every record holds (records.structure_problem checks those when it is read).
REBUILD_KEYS = ((("suite_file",), str), (("method", "options"), dict), (("backbone", "args"), dict),
                (("train",), dict), (("recipe", "name"), str), (("protocol",), dict), (("data", "root"), str),
                (("data", "preprocessing"), dict))


def rebuild(record_path: str | Path, data_root: str | None = None) -> Deployed:
    """The run's backbone and method, rebuilt exactly as it trained, with its task weights loaded."""
    path = Path(record_path)
    record = read(path)
    if record["protocol"].get("base_to_new"):  # its weights classify the base classes only
        raise UserError(f"{path}: a base-to-new run (--base-to-new); eval, predict and export do not rebuild those yet")
    suite = load_suite(record["suite_file"])
    task = next((t for t in suite.tasks if t.name == record["task"]), None)
    if task is None:
        raise UserError(f"{path}: task {record['task']!r} is no longer in {record['suite_file']}")
    cls = get_method(record["method"]["name"])
    method = cls(build(cls.Config, record["method"]["options"], f"{path}: method options")).for_task(task)
    if record.get("noah_search"):  # noah:subnet=search: the subnet its search chose (petlbench.sweep.noah_search)
        method = cls(method.config, record["noah_search"]["subnet"])
    spec = backbone_spec(record, path)
    plan = RunPlan(suite, task, method, spec, record["seed"], rebuilt_train(record["train"], f"{path}: train"),
                   recorded_recipe(record["recipe"]), record["protocol"],
                   Path(data_root).expanduser() if data_root else Path(record["data"]["root"]))
    problem = weights_problem(record, path)
    if problem:
        raise UserError(problem)
    text = record.get("text") or {}  # a CLIP run's class names and templates, as it trained
    model, _, task_keys = build_model(spec, method, task.classes, record["seed"],
                                      text.get("classnames") or None, text.get("templates") or None)
    load_task(model, weights_path(path), task_keys)
    return Deployed(record, plan, model.eval(), record["data"]["preprocessing"])


def recorded_recipe(recipe: dict[str, Any]) -> Recipe:
    """A named recipe, or (--protocol paper: 'paper:<source>') the name and source the record holds; evaluation
    reads no training values from it."""
    return RECIPES.get(recipe["name"]) or Recipe(recipe["name"], str(recipe.get("source", "")), {}, {})


def backbone_spec(record: dict[str, Any], path: Path) -> BackboneSpec:
    b = record["backbone"]
    if b.get("checkpoint"):
        ckpt = Path(b["checkpoint"]).expanduser()
        if not ckpt.is_file():
            raise UserError(f"{path}: the run's checkpoint {ckpt} is not found")
        if b.get("checkpoint_sha256") and file_sha256(ckpt) != b["checkpoint_sha256"]:
            raise UserError(f"{path}: the checkpoint {ckpt} changed since the run (sha256 differs)")
    return BackboneSpec(b["name"], dict(b["args"]), checkpoint=b.get("checkpoint"),
                        pretrained=b["weights"] == "timm-pretrained", checkpoint_sha256=b.get("checkpoint_sha256"))


def evaluate_record(record_path: str | Path, data_root: str | None, device: torch.device,
                    cache_dir: Path | None) -> dict[str, Any]:
    """The run's metric recomputed from its saved weights on its evaluation splits, beside the recorded one."""
    deployed = rebuild(record_path, data_root)
    plan, record = deployed.plan, deployed.record
    data = SplitCache(cache_dir).get(plan, plan.protocol["eval_splits"], deployed.prep, train=False)
    recorded_digest = record["data"].get("eval_digest")
    if recorded_digest and data.digest != recorded_digest:
        raise UserError(f"{record_path}: the evaluation data changed since the run (digest {data.digest[:12]} vs "
                        f"{recorded_digest[:12]}); the accuracy would not be comparable")
    top1 = evaluate(deployed.model.to(device), data.to(device), plan.train, device)
    metric = metric_of(record)
    return {"record": str(record_path), "metric": metric, "recorded": record["metrics"][metric], "now": top1,
            "images": len(data), "same": top1 == record["metrics"][metric]}


@torch.no_grad()
def predict(record_path: str | Path, images: list[str], top: int, device: torch.device) -> list[dict[str, Any]]:
    """Top classes of each image, decoded and normalised exactly as the run's evaluation split was."""
    deployed = rebuild(record_path)
    prep, model = deployed.prep, deployed.model.to(device)
    size, crop = stored_size(prep), tuple(prep["input_size"][-2:])
    names = class_names(deployed)
    mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
    rows = []
    for image in images:
        pixels = decode(Path(image), size, prep["interpolation"], keep_aspect=prep.get("crop_pct", 1.0) < 1.0)
        batch = TensorData(torch.from_numpy(np.ascontiguousarray(pixels))[None], torch.zeros(1, dtype=torch.long),
                           mean, std, crop=crop).to(device)
        x, _ = batch.batch(torch.zeros(1, dtype=torch.long, device=batch.device))
        probs = model(x).float().softmax(dim=1)[0].cpu()
        values, indices = probs.topk(min(top, probs.numel()))
        rows.append({"image": image, "top": [{"class": int(i), "name": names.get(int(i)), "probability": float(v)}
                                             for v, i in zip(values, indices)]})
    return rows


def class_names(deployed: Deployed) -> dict[int, str]:
    """FGVC: the original class id of each label (the split files' ids); NOAH lists have no names."""
    plan = deployed.plan
    if plan.suite.layout != "fgvc":
        return {}
    try:
        ids = fgvc_class_ids(find_task_dir(plan.data_root, plan.task), plan.task, plan.suite.split_names())
    except UserError:
        return {}
    return {label: f"class id {cid}" for cid, label in ids.items()}


def export_merged(record_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Fold the method into the backbone (Method.merge) and save a plain timm state dict, head included."""
    out = Path(out)
    check_output_file(out, "export OUT", "the state dict")  # before the model is rebuilt
    refuse_target(out, Path(record_path), read(record_path))
    deployed = rebuild(record_path)
    merged = deployed.plan.method.merge(deployed.model)
    plain = create_backbone(dataclasses.replace(deployed.plan.backbone, pretrained=False, checkpoint=None),
                            deployed.plan.task.classes)
    difference = same_architecture(merged, plain)
    if difference:
        raise UserError(f"{record_path}: method {deployed.plan.method.name!r} did not merge into the backbone's "
                        f"architecture ({difference})")
    state = {k: v.detach().cpu().contiguous() for k, v in merged.state_dict().items()}
    try:
        write_safetensors(state, out, {"format": "timm state dict", "model": deployed.plan.backbone.name})
    except Exception as exc:  # a full disk raises safetensors' own error; nothing is left at OUT
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise UserError(f"{out}: cannot write the exported model ({reason})") from None
    return {"file": str(out), "bytes": out.stat().st_size, "tensors": len(state),
            "model": deployed.plan.backbone.name, "num_classes": deployed.plan.task.classes,
            "args": deployed.plan.backbone.args}


def refuse_target(out: Path, record_path: Path, record: dict[str, Any]) -> None:
    """OUT may be new, or an earlier export; never a record, task weights, or a file the record names."""
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give the file to write, e.g. {out / 'model.safetensors'}")
    if not out.exists():
        return
    what = referenced(record_path, record).get(out.resolve()) or results_file(out)
    folder = (record.get("data") or {}).get("folder")
    if not what and folder and Path(folder).resolve() in out.resolve().parents:
        what = f"a file in the run's data folder {folder}"
    if what:
        raise UserError(f"{out}: is {what}; export refuses to overwrite it (give another OUT)")


def referenced(record_path: Path, record: dict[str, Any]) -> dict[Path, str]:
    """The files the exported run's record is, or names: itself, its weights, suite file, checkpoint."""
    named = {record_path: "the run's record", weights_path(record_path): "the run's task weights",
             record.get("suite_file"): "the run's suite file", record["backbone"].get("checkpoint"): "the run's checkpoint"}
    return {Path(p).expanduser().resolve(): what for p, what in named.items() if p}


def results_file(path: Path) -> str | None:
    """What `path` is in a results folder (a record or selection, task weights), or None."""
    if path.suffix != ".safetensors":
        return "a run record of a results folder" if read_record(path) is not None or is_selection(path) else None
    if read_record(path.with_suffix(".json")) is not None:
        return f"the task weights of the run {path.with_suffix('.json').name}"
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("format") == "petlbench task weights":
                return "a run's task weights"
    except Exception:  # not a readable safetensors file: nothing of a run
        return None
    return None


def is_selection(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == "selection"
    except (OSError, ValueError, AttributeError):
        return False
