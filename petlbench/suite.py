"""Suites: YAML data naming the tasks, their layout, the protocol and the training recipe.

A suite is a packaged name (`benchmarks/<name>.yaml`, or one of its `aliases:`) or a path to the
user's own YAML file. Everything is validated on load; errors name the file and the key. Names that
become folders and files (suite, tasks, aliases, splits) must be plain names, never paths.
"""
from __future__ import annotations

import importlib.resources
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petlbench.classnames import check_classnames, suite_templates, task_names, task_subset  # noqa: F401 (CLIP runs)
from petlbench.errors import UserError
from petlbench.options import build, read_yaml
from petlbench.recipes import RECIPES
from petlbench.registry import get_method
from petlbench.specs import INTERPOLATIONS, LAYOUT_SPLITS, Preprocessing, Task, TrainConfig

TOP_KEYS = {"name", "aliases", "description", "layout", "data_root", "prepare", "backbone", "splits", "groups",
            "preprocessing", "recipe", "train", "method_options", "tasks", "templates"}
TASK_KEYS = {"name", "classes", "group", "aliases", "images", "classnames", "templates", "classnames_source",
             "classnames_from"}
BACKBONE_KEYS = {"name", "args", "checkpoint", "pretrained", "mean", "std", "interpolation"}
PREPARERS = {"demo", "demo-clip"}
# A name that becomes a folder or file: never a path, never hidden, nothing that leaves the data root or --out.
PLAIN_NAME = re.compile(r"[\w+-][\w.+-]*\Z")
PLAIN_NAME_RULE = "a plain name (letters, digits, _ - . +, not starting with '.'; no / or \\)"
KIND = {str: "string", dict: "mapping", list: "list"}


@dataclass
class Suite:
    name: str
    path: str
    tasks: list[Task]
    layout: str = "noah"
    aliases: list[str] = field(default_factory=list)  # other names of a packaged suite for --suite
    description: str = ""
    data_root: str | None = None
    prepare: str | None = None
    backbone: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=lambda: dict(LAYOUT_SPLITS["noah"]))
    groups: list[str] = field(default_factory=list)  # report order of task groups
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    recipe: str | None = None  # a named recipe for every method; None: each method's own paper recipe
    train: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method defaults here

    def split_names(self) -> list[str]:
        """Every split file its protocols read, in role order (train, val, trainval, test), each once."""
        return list(dict.fromkeys(s for role in ("train", "val", "trainval", "test") for s in self.splits[role]))

    def select(self, names: list[str] | None) -> list[Task]:
        if not names:
            return self.tasks
        known = {alias: t for t in self.tasks for alias in (t.name, *t.aliases)}
        for n in names:
            if n not in known:
                raise UserError(f"--tasks: {n!r} is not a task of suite {self.name!r}; "
                                f"valid: {', '.join(t.name for t in self.tasks)}")
        chosen = {known[n].name: known[n] for n in names}  # aliases of one task count once
        return list(chosen.values())

    def protocol(self, name: str, stage: str | None = None) -> dict[str, Any]:
        """What a run trains and evaluates on, written into its record."""
        if name == "final":
            return {"name": "final", "train_splits": self.splits["trainval"], "eval_splits": self.splits["test"],
                    "metric": "top1", "report": "last epoch; no selection on the evaluation split"}
        if stage == "search":
            return {"name": "tune", "stage": "search", "train_splits": self.splits["train"],
                    "eval_splits": self.splits["val"], "metric": "top1",
                    "select": "best last-epoch val top-1; ties -> smaller lr"}
        return {"name": "tune", "stage": "final", "train_splits": self.splits["trainval"],
                "eval_splits": self.splits["test"], "metric": "top1",
                "report": "last epoch of the config selected on val; test not seen before"}


def packaged_suites() -> dict[str, Path]:
    folder = importlib.resources.files("petlbench.benchmarks")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def packaged_aliases() -> dict[str, list[str]]:
    """Each packaged suite's `aliases:` (`vtab1k`: vtab, vtab-1k), read without validating the whole file."""
    found = {}
    for name, path in packaged_suites().items():
        raw = read_yaml(path, "a suite YAML saved as UTF-8")
        found[name] = list(raw.get("aliases") or []) if isinstance(raw, dict) else []
    return found


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path).expanduser()
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        suites, aliases = packaged_suites(), packaged_aliases()
        name = next((n for n in sorted(suites) if name_or_path in (n, *aliases[n])), None)
        if name is None:
            shown = ", ".join(f"{n} (also {', '.join(aliases[n])})" if aliases[n] else n for n in sorted(suites))
            raise UserError(f"--suite: unknown suite {name_or_path!r}; packaged: {shown} "
                            "(or give the path of a YAML file)")
        path = suites[name]
    if not path.is_file():
        raise UserError(f"{path}: suite file not found")
    return parse_suite(read_yaml(path, "a suite YAML saved as UTF-8"), str(path))


def parse_suite(raw: Any, where: str) -> Suite:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping at the top level")
    _no_unknown(raw, TOP_KEYS, where, "")
    name = _plain(_get(raw, "name", str, where, required=True), where, "name")
    aliases = [_plain(a, where, "aliases") for a in _get(raw, "aliases", list, where) or []]
    layout = _get(raw, "layout", str, where) or "noah"
    if layout not in LAYOUT_SPLITS:
        raise UserError(f"{where}: key 'layout' must be one of {sorted(LAYOUT_SPLITS)}, got {layout!r}")
    prepare = _get(raw, "prepare", str, where)
    if prepare is not None and prepare not in PREPARERS:
        raise UserError(f"{where}: key 'prepare' must be one of {sorted(PREPARERS)}, got {prepare!r}")
    backbone = _backbone(_get(raw, "backbone", dict, where) or {}, where)
    splits = dict(LAYOUT_SPLITS[layout])
    for role, files in (_get(raw, "splits", dict, where) or {}).items():
        if role not in splits:
            raise UserError(f"{where}: unknown key 'splits.{role}'; valid: {', '.join(splits)}")
        files = [files] if isinstance(files, str) else files
        if not (isinstance(files, list) and files and all(isinstance(f, str) for f in files)):
            raise UserError(f"{where}: key 'splits.{role}' must be a split name or a list of them, got {files!r}")
        splits[role] = [_plain(f, where, f"splits.{role}") for f in files]
    tasks_raw = _get(raw, "tasks", list, where, required=True)
    if not tasks_raw:
        raise UserError(f"{where}: key 'tasks' must list at least one task")
    tasks = [_task(t, where, i) for i, t in enumerate(tasks_raw)]
    suite_templates(tasks, raw, where)  # class names and templates: petlbench.classnames
    names = [n for t in tasks for n in (t.name, *t.aliases)]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{where}: key 'tasks': name or alias {dup!r} is listed twice")
    _domains(tasks, tasks_raw, layout, where)  # the domainbed layout's held-out and training domains
    groups = _get(raw, "groups", list, where) or list(dict.fromkeys(t.group for t in tasks if t.group))
    if not all(isinstance(g, str) and g for g in groups):
        raise UserError(f"{where}: key 'groups' must be a list of group names (strings), got {groups!r}")
    stray = sorted({t.group for t in tasks if t.group} - set(groups))
    if stray:
        raise UserError(f"{where}: key 'groups' lacks the group {stray[0]!r} that a task names")
    recipe = _get(raw, "recipe", str, where)
    if recipe is not None and recipe not in RECIPES:
        raise UserError(f"{where}: key 'recipe' must be one of {', '.join(RECIPES)}, got {recipe!r}")
    # preprocessing, recipe and method options are checked now, not mid-run
    preprocessing = build(Preprocessing, _get(raw, "preprocessing", dict, where) or {}, f"{where}: key 'preprocessing'")
    train = _get(raw, "train", dict, where) or {}
    build(TrainConfig, train, f"{where}: key 'train'")
    method_options = _get(raw, "method_options", dict, where) or {}
    for method, opts in method_options.items():
        key = f"{where}: key 'method_options.{method}'"
        if not isinstance(opts, dict):
            raise UserError(f"{key} must be a mapping of option: value")
        try:
            build(get_method(method).Config, opts, key)
        except UserError as exc:  # name the suite file and key, whatever the registry said
            raise UserError(str(exc) if str(exc).startswith(where) else f"{key}: {exc}") from None
    return Suite(name=name, path=where, tasks=tasks, layout=layout, aliases=aliases,
                 description=_get(raw, "description", str, where) or "",
                 data_root=_get(raw, "data_root", str, where), prepare=prepare, backbone=backbone, splits=splits,
                 groups=groups, preprocessing=preprocessing, recipe=recipe, train=train, method_options=method_options)


def _task(raw: Any, where: str, index: int) -> Task:
    key = f"tasks[{index}]"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: key '{key}' must be a mapping with name, classes and group")
    _no_unknown(raw, TASK_KEYS | DOMAIN_KEYS, where, key + ".")
    name, classes = raw.get("name"), raw.get("classes")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: key '{key}.name' must be a task folder name, got {name!r}")
    _plain(name, where, f"{key}.name")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise UserError(f"{where}: key '{key}.classes' must be a positive integer, got {classes!r}")
    aliases = raw.get("aliases") or []
    if not (isinstance(aliases, list) and all(isinstance(a, str) and a for a in aliases)):
        raise UserError(f"{where}: key '{key}.aliases' must be a list of folder names, got {aliases!r}")
    for alias in aliases:
        _plain(alias, where, f"{key}.aliases")
    group = raw.get("group", "")
    if not isinstance(group, str):
        raise UserError(f"{where}: key '{key}.group' must be a group name (a string), got {group!r}")
    images = raw.get("images", "")
    if not isinstance(images, str) or Path(images).is_absolute() or ".." in Path(images).parts:
        raise UserError(f"{where}: key '{key}.images' must be a folder inside the task folder, got {images!r}")
    return task_names(Task(name, classes, group, aliases, images.strip("/") if images != "." else ""), raw, where, key)


DOMAIN_KEYS = {"dataset", "domain", "train_domains", "class_subset", "multilabel"}  # per task, the domainbed layout's (petlbench.data.domains)


def _domains(tasks: list[Task], raw: list[dict], layout: str, where: str) -> None:
    """The domainbed layout's keys (petlbench.data.domains): a task's `dataset` folder, held-out `domain` (default
    its name) and `train_domains` (default the dataset's other domains in the suite); folder names, never paths."""
    for i, (task, entry) in enumerate(zip(tasks, raw)):
        keys = sorted(k for k in DOMAIN_KEYS if k in entry)
        if layout != "domainbed":
            if keys:
                raise UserError(f"{where}: key 'tasks[{i}].{keys[0]}' is for the domainbed layout only")
            continue
        task.dataset, task.domain = entry.get("dataset"), entry.get("domain", task.name)
        task.train_domains = entry.get("train_domains", [])
        if not isinstance(task.train_domains, list):
            raise UserError(f"{where}: key 'tasks[{i}].train_domains' must be a list of domain folder names")
        for key, value in (("dataset", task.dataset), ("domain", task.domain),
                           *(("train_domains", d) for d in task.train_domains)):
            if not (isinstance(value, str) and value.strip() and value not in ("..",) and not value.startswith(".")
                    and "/" not in value and "\\" not in value):
                raise UserError(f"{where}: key 'tasks[{i}].{key}' must be a folder name (no / or \\, not starting "
                                f"with '.'), got {value!r}")
        if entry.get("class_subset") is not None:  # ImageNet-A/-R: the held-out domain's classes (petlbench.classnames)
            task_subset(task, entry["class_subset"], where, f"tasks[{i}].class_subset")
        task.multilabel = entry.get("multilabel", False)
        if not isinstance(task.multilabel, bool):
            raise UserError(f"{where}: key 'tasks[{i}].multilabel' must be true or false, got {task.multilabel!r}")
        if task.domain in task.train_domains:
            raise UserError(f"{where}: key 'tasks[{i}].train_domains' holds the held-out domain {task.domain!r}")
    for task in tasks if layout == "domainbed" else []:
        same = [t for t in tasks if t.dataset == task.dataset]
        # DomainBed's environments hold every class: a held-out class subset (ImageNet-A/-R) is none of them
        task.domains = sorted({d for t in same for d in ([] if t.class_subset else [t.domain]) + t.train_domains})
        task.train_domains = task.train_domains or [d for d in task.domains if d != task.domain]
        if not task.train_domains:
            raise UserError(f"{where}: task {task.name!r}: no training domain (one domain of dataset "
                            f"{task.dataset!r} in the suite; list others as tasks or under 'train_domains')")


def _get(raw: dict, key: str, kind: type, where: str, required: bool = False):
    value = raw.get(key)
    if value is None:
        if required:
            raise UserError(f"{where}: key {key!r} is required")
        return None
    if not isinstance(value, kind):
        got = f"a {KIND.get(type(value), type(value).__name__)}" if isinstance(value, (dict, list)) else repr(value)
        raise UserError(f"{where}: key {key!r} must be a {KIND.get(kind, kind.__name__)}, got {got}")
    return value


def _plain(value: Any, where: str, key: str) -> str:
    """A name that becomes a folder or a file name; `../x`, `/abs` or `a/b` would leave the data root or --out."""
    if not (isinstance(value, str) and PLAIN_NAME.match(value)):
        raise UserError(f"{where}: key '{key}' must be {PLAIN_NAME_RULE}, got {value!r}")
    return value


def _backbone(backbone: dict, where: str) -> dict:
    """The suite's backbone keys, each checked for the type it needs (null: not set, except name and pretrained)."""
    _no_unknown(backbone, BACKBONE_KEYS, where, "backbone.")
    backbone = {k: v for k, v in backbone.items() if v is not None or k in ("name", "pretrained")}

    def bad(key: str, expected: str):
        return UserError(f"{where}: key 'backbone.{key}' must be {expected}, got {backbone[key]!r}")
    if "name" in backbone and not (isinstance(backbone["name"], str) and backbone["name"]):
        raise bad("name", "a timm model name (a string)")
    args = backbone.get("args", {})
    if not (isinstance(args, dict) and all(isinstance(k, str) for k in args)):
        raise bad("args", "a mapping of timm.create_model arguments, e.g. {drop_path_rate: 0.1}")
    if "checkpoint" in backbone and not (isinstance(backbone["checkpoint"], str) and backbone["checkpoint"]):
        raise bad("checkpoint", "a path (a string) to .safetensors or torch weights")
    if "pretrained" in backbone and not isinstance(backbone["pretrained"], bool):
        raise bad("pretrained", "true or false (a YAML boolean, unquoted)")
    for key, least in (("mean", -math.inf), ("std", 0.0)):
        value = backbone.get(key, [1.0, 1.0, 1.0])
        numbers = isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > least for v in value)
        if not numbers:
            raise bad(key, "three numbers, one per RGB channel" if key == "mean"
                      else "three positive numbers, one per RGB channel")
    if "interpolation" in backbone and backbone["interpolation"] not in INTERPOLATIONS:
        raise bad("interpolation", f"one of {', '.join(INTERPOLATIONS)}")
    return backbone


def _no_unknown(raw: dict, allowed: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key '{prefix}{unknown[0]}'; valid: {', '.join(sorted(allowed))}")
