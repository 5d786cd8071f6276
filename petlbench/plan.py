"""From a command to runs: resolve recipe, backbone, data root and protocol into RunPlans.

Precedence, lowest first. Training: TrainConfig defaults < the recipe (the method's own paper
recipe, or the one named by the suite or --recipe) < the recipe's epochs for K shots (`--shots K`, a recipe with a
schedule per shots: CoOp's) < the method's `train_defaults` (only with its own recipe) < the suite's `train:` <
--train. A suite's `train:` is its author's choice for every method (the demos' CPU budget), so it beats a
method's paper departures; a suite that wants each paper's schedule leaves those keys out. The record's
`recipe.train_from` names the layer each value came from. Backbone: recipe (drop-path, mean/std, interpolation) <
the suite's `backbone:` < the command line.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from petlbench.backbone import BackboneSpec, file_sha256, meta_model, preprocessing
from petlbench.classnames import DEFAULT_TEMPLATES, check_classnames
from petlbench.clip import is_clip
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import as_dict, build, finite
from petlbench.params import meta_counts
from petlbench.recipes import RECIPES, Recipe, shot_schedule
from petlbench.specs import Task, TrainConfig
from petlbench.suite import Suite

DATA_ROOT_ENV = "PETLBENCH_DATA_ROOT"


def method_label(method: Method) -> str:
    """'vpt_deep' or 'vpt_deep:tokens=10' (only options that differ from the defaults)."""
    default = as_dict(method.Config())
    changed = [f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in as_dict(method.config).items() if default.get(k) != v]
    return ":".join([method.name, *changed])


LABEL_CHARS = 80  # a label longer than this (a peft config path, many options) is shortened in file names


def file_label(label: str) -> str:
    """A method label as part of a file name: safe characters only, and a long one cut short with a hash of the
    whole label, so the name stays far below the file system's 255 bytes (the record keeps the full label)."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", label)
    if len(slug) <= LABEL_CHARS:
        return slug
    return f"{slug[:LABEL_CHARS - 17]}~{hashlib.sha256(label.encode()).hexdigest()[:16]}"


@dataclass
class RunPlan:
    suite: Suite
    task: Task
    method: Method
    backbone: BackboneSpec
    seed: int
    train: TrainConfig
    recipe: Recipe
    protocol: dict[str, Any]
    data_root: Path
    data_id: str | None = None  # digest of the decoded images and labels the run sees; set once they are loaded
    train_from: dict[str, str] = dataclasses.field(default_factory=dict)  # train key -> the layer that set it

    def config(self) -> dict[str, Any]:
        """The fully resolved configuration without the data; its hash is the config id."""
        b = self.backbone
        return {
            "suite": self.suite.name, "task": self.task.name, "seed": self.seed,
            "method": {"name": self.method.name, "options": self.method.identity()},
            "backbone": {"name": b.name, "args": b.args, "weights": b.weights, "mean": b.mean, "std": b.std,
                         "interpolation": b.interpolation},
            "preprocessing": as_dict(self.suite.preprocessing),
            "train": train_identity(self.train), "protocol": self.protocol,
            **({"text": self.text()} if self.text() else {}),
        }

    def text(self) -> dict[str, list[str]] | None:
        """A CLIP backbone's class names and prompt templates (what its zero-shot head and text methods read);
        None for an image-only backbone, whose runs never read them."""
        if not is_clip(self.backbone.name):
            return None
        names = list(self.task.classnames)
        return {"classnames": names, "templates": list(self.task.templates or (DEFAULT_TEMPLATES if names else []))}

    def config_id(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:12]

    def run_id(self) -> str:
        """config id + data id: the same command on changed data (same paths) is a new run, never a skip."""
        return f"{self.config_id()}-{self.data_id[:8]}" if self.data_id else self.config_id()

    @property
    def is_search(self) -> bool:
        return self.protocol.get("stage") == "search"

    @property
    def metric(self) -> str:
        return "val_top1" if self.is_search else "test_top1"

    def record_stem(self) -> str:
        """The record's file name without the run id: method label and seed (search: the grid point)."""
        slug = file_label(method_label(self.method))
        if self.is_search:
            return f"{slug}__lr{self.train.lr:g}_wd{self.train.weight_decay:g}"
        return f"{slug}__seed{self.seed}"

    def record_dir(self, out: Path) -> Path:
        folder = out / self.suite.name / self.task.name
        return folder / "search" if self.is_search else folder

    def record_path(self, out: Path) -> Path:
        return self.record_dir(out) / f"{self.record_stem()}__{self.run_id()}.json"

    def preprocessing(self) -> dict[str, Any]:
        """How the task's files become inputs: the backbone's config (built on the meta device: no weights,
        no memory, nothing fetched) and the suite's crop and augmentation."""
        key = json.dumps([asdict(self.backbone), asdict(self.suite.preprocessing)], sort_keys=True, default=str)
        return dict(_preprocessing(key, self.backbone, self.suite.preprocessing))


_PREPROCESSING: dict[str, dict[str, Any]] = {}


def _preprocessing(key: str, backbone: BackboneSpec, pre) -> dict[str, Any]:
    """Once per backbone and suite preprocessing (`key`): building even a meta-device model takes a while."""
    if key not in _PREPROCESSING:
        model = meta_model(backbone, 2)
        _PREPROCESSING[key] = preprocessing(model, backbone, pre.crop_pct, pre.train, pre.eval, pre.input_size)
    return _PREPROCESSING[key]


def recipe_for(method: Method, suite: Suite, recipe: str | None) -> tuple[Recipe, bool]:
    """The recipe a method trains with, and whether it was named for all methods (suite or --recipe)."""
    name = recipe or suite.recipe
    if name is not None and name not in RECIPES:
        raise UserError(f"--recipe: expected one of {', '.join(RECIPES)}, got {name!r}")
    return RECIPES[name or method.recipe], name is not None


def departures(method: Method, recipe: Recipe) -> dict[str, Any]:
    """The method's departures from its paper's recipe (its decay rule too): only when it trains under that recipe."""
    if recipe.name != method.recipe:
        return {}
    return {**({"decay_rule": method.decay_rule} if method.decay_rule else {}), **method.train_defaults}


def train_identity(train: TrainConfig) -> dict[str, Any]:
    """What of the training config makes a run's identity: all of it, but timm's decay rule, which every run
    trained with before the rule was a setting, is left out, so those runs keep their identity (and are skipped)."""
    values = asdict(train)
    if values["decay_rule"] == "timm":
        del values["decay_rule"]
    return values


def tune_grid(method: Method, recipe: Recipe) -> dict[str, list]:
    """The tune protocol's default grid: the method's own under its paper's recipe, else the recipe's."""
    return dict(method.tune_grid) if method.tune_grid and recipe.name == method.recipe else dict(recipe.grid)


def defaults_source(method: Method, recipe: Recipe) -> str:
    return method.defaults_source if method.defaults_source and recipe.name == method.recipe else recipe.defaults_source


def train_layers(method: Method, suite: Suite, overrides: dict[str, Any], recipe: str | None = None,
                 shots: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The training settings' layers, lowest first, each named as the record's `recipe.train_from` says it."""
    chosen, _ = recipe_for(method, suite, recipe)
    return [(f"recipe {chosen.name}", chosen.train),
            (f"recipe {chosen.name} at {shots} shot{'' if shots == 1 else 's'}", shot_schedule(chosen, shots)),
            (f"method {method.name}", departures(method, chosen)), ("suite", suite.train), ("command line", overrides)]


def resolve_train(method: Method, suite: Suite, overrides: dict[str, Any], recipe: str | None = None,
                  shots: int | None = None) -> TrainConfig:
    return resolve_with_sources(method, suite, overrides, recipe, shots)[0]


def resolve_with_sources(method: Method, suite: Suite, overrides: dict[str, Any], recipe: str | None = None,
                         shots: int | None = None) -> tuple[TrainConfig, dict[str, str]]:
    """The training config and, per key any layer set, the layer whose value won."""
    values, sources = {}, {}
    for layer, settings in train_layers(method, suite, overrides, recipe, shots):
        values.update(settings)
        sources.update(dict.fromkeys(settings, layer))
    train = build(TrainConfig, values, f"training config of {method.name}")
    if not method.trains:  # zero-shot, training-free caches: evaluated as built, whatever the recipe says
        train = dataclasses.replace(train, epochs=0, warmup_epochs=0)  # below what a user may ask for: on purpose
        sources.update(dict.fromkeys(("epochs", "warmup_epochs"), f"method {method.name} (trains nothing)"))
    return train, sources


def rebuilt_train(values: dict[str, Any], where: str) -> TrainConfig:
    """A resolved training config built again (a tune grid point, a record's): `epochs` 0, a method that does not
    train, is kept, though no user may ask for it."""
    if values.get("epochs") == 0:
        return dataclasses.replace(build(TrainConfig, {**values, "epochs": 1}, where), epochs=0)
    return build(TrainConfig, values, where)


def resolve_backbone(suite: Suite, data_root: Path, name: str | None, args: dict[str, Any] | None,
                     checkpoint: str | None, random_init: bool, mean: tuple | None = None,
                     std: tuple | None = None) -> BackboneSpec:
    """--backbone replaces the suite's backbone; --backbone-args, --checkpoint, --mean/--std refine either."""
    base = {} if name else dict(suite.backbone)
    name = name or base.get("name")
    if not name:
        raise UserError(f"{suite.path}: the suite names no backbone; pass --backbone NAME")
    ckpt = checkpoint or base.get("checkpoint")
    if ckpt and not checkpoint and not Path(ckpt).expanduser().is_absolute():
        ckpt = str(data_root / Path(ckpt).expanduser())  # a suite's relative checkpoint lives in its data root
    ckpt = None if random_init else ckpt
    if ckpt and not Path(ckpt).expanduser().is_file():
        where = "--checkpoint" if checkpoint else f"{suite.path}: key 'backbone.checkpoint'"
        raise UserError(f"{where}: {ckpt}: file not found")
    merged = {**base.get("args", {}), **(args or {})}
    for key, value in merged.items():  # timm takes a NaN drop-path rate, and every run then fails
        if not finite(value):
            where = "--backbone-args" if key in (args or {}) else f"{suite.path}: key 'backbone.args'"
            raise UserError(f"{where}: {key!r} expects finite numbers, got {value!r}")
    return BackboneSpec(name=name, args=merged,
                        checkpoint=ckpt, checkpoint_sha256=file_sha256(Path(ckpt).expanduser()) if ckpt else None,
                        pretrained=bool(base.get("pretrained", True)) and not random_init,
                        mean=_triple(mean or base.get("mean")), std=_triple(std or base.get("std")),
                        interpolation=base.get("interpolation"))


PREPROCESSING_KEYS = ("mean", "std", "interpolation")  # a method's backbone_defaults may set these too
OWN = "backbone"  # e.g. backbone_defaults = {"mean": OWN, "std": OWN}: the weights' own normalisation


def backbone_for(spec: BackboneSpec, recipe: Recipe, method: Method | None = None) -> BackboneSpec:
    """The recipe (and the method's departures from it, e.g. no drop-path) fill in what neither the suite nor
    the command line set."""
    own = dict(method.backbone_defaults) if method is not None and recipe.name == method.recipe else {}
    pre = {**recipe.preprocessing, **{k: own.pop(k) for k in PREPROCESSING_KEYS if k in own}}
    pre = {k: None if v == OWN else v for k, v in pre.items()}  # OWN: the backbone's pretrained config decides
    if is_clip(spec.name):  # a recipe's mean/std belong to its paper's ViT; CLIP's weights expect their own
        pre.update(mean=None, std=None)
    return dataclasses.replace(spec, args={**recipe.backbone_args, **own, **spec.args},
                               mean=spec.mean or _triple(pre.get("mean")), std=spec.std or _triple(pre.get("std")),
                               interpolation=spec.interpolation or pre.get("interpolation"))


def resolve_data_root(suite: Suite, data_root: str | None) -> Path:
    """--data-root, else the suite's own data_root, else $PETLBENCH_DATA_ROOT."""
    chosen = data_root or suite.data_root or os.environ.get(DATA_ROOT_ENV)
    if not chosen:
        raise UserError(f"suite {suite.name!r} needs a data root: pass --data-root DIR or set ${DATA_ROOT_ENV}")
    return Path(os.path.expandvars(chosen)).expanduser()


def plan_one(suite: Suite, task: Task, method: Method, spec: BackboneSpec, seed: int, overrides: dict[str, Any],
             recipe: str | None, protocol: dict[str, Any], data_root: Path) -> RunPlan:
    """One run, resolved; the method is built on the backbone's meta device first (once per configuration and
    backbone), so options that do not fit the backbone are refused here, not by every run failing."""
    method = method.for_task(task)
    chosen, _ = recipe_for(method, suite, recipe)
    backbone = backbone_for(spec, chosen, method)
    if is_clip(backbone.name) and (method.needs_text or backbone.args.get("head") == "zeroshot"):
        check_classnames(task)  # a text classifier from names that are missing or miscounted is refused here
    meta_counts(backbone, method)
    train, sources = resolve_with_sources(method, suite, overrides, recipe, protocol.get("shots"))
    return RunPlan(suite, task, method, backbone, seed, train, chosen, protocol, data_root, train_from=sources)


def _triple(value) -> tuple[float, ...] | None:
    if not value:
        return None
    if len(value) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
        raise UserError(f"mean/std: expected three finite numbers (one per RGB channel), got {value!r}")
    return tuple(float(v) for v in value)
