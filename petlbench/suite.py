"""Suites: YAML data naming the tasks, their layout, the protocol and the training recipe.

A suite is a packaged name (`benchmarks/<name>.yaml`) or a path to the user's own YAML file.
Everything is validated on load; errors name the file and the key.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from petlbench.errors import UserError
from petlbench.options import build
from petlbench.registry import get_method
from petlbench.train import TrainConfig

TOP_KEYS = {"name", "description", "layout", "data_root", "prepare", "backbone", "protocol", "train", "tasks",
            "method_options"}
BACKBONE_KEYS = {"name", "args", "checkpoint", "pretrained", "mean", "std", "interpolation"}
LAYOUTS = {"noah"}
PREPARERS = {"demo"}
FINAL_PROTOCOL = {"name": "final", "train_split": "train800val200", "eval_split": "test",
                  "metric": "top1", "report": "last epoch (no selection on the evaluation split)"}


@dataclass
class Task:
    name: str
    classes: int
    group: str = ""


@dataclass
class Suite:
    name: str
    path: str
    tasks: list[Task]
    layout: str = "noah"
    description: str = ""
    data_root: str | None = None
    prepare: str | None = None
    backbone: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=lambda: dict(FINAL_PROTOCOL))
    train: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method defaults here

    def select(self, names: list[str] | None) -> list[Task]:
        if not names:
            return self.tasks
        known = {t.name: t for t in self.tasks}
        for n in names:
            if n not in known:
                raise UserError(f"--tasks: {n!r} is not a task of suite {self.name!r}; valid: {', '.join(known)}")
        return [known[n] for n in names]


def packaged_suites() -> dict[str, Path]:
    folder = importlib.resources.files("petlbench.benchmarks")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path).expanduser()
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        suites = packaged_suites()
        if name_or_path not in suites:
            raise UserError(f"--suite: unknown suite {name_or_path!r}; packaged: {', '.join(sorted(suites))} "
                            "(or give the path of a YAML file)")
        path = suites[name_or_path]
    if not path.is_file():
        raise UserError(f"{path}: suite file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_suite(raw, str(path))


def parse_suite(raw: Any, where: str) -> Suite:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping at the top level")
    _no_unknown(raw, TOP_KEYS, where, "")
    name = _get(raw, "name", str, where, required=True)
    layout = _get(raw, "layout", str, where) or "noah"
    if layout not in LAYOUTS:
        raise UserError(f"{where}: key 'layout' must be one of {sorted(LAYOUTS)}, got {layout!r}")
    prepare = _get(raw, "prepare", str, where)
    if prepare is not None and prepare not in PREPARERS:
        raise UserError(f"{where}: key 'prepare' must be one of {sorted(PREPARERS)}, got {prepare!r}")
    backbone = _get(raw, "backbone", dict, where) or {}
    _no_unknown(backbone, BACKBONE_KEYS, where, "backbone.")
    protocol = dict(FINAL_PROTOCOL)
    protocol.update(_get(raw, "protocol", dict, where) or {})
    tasks_raw = _get(raw, "tasks", list, where, required=True)
    if not tasks_raw:
        raise UserError(f"{where}: key 'tasks' must list at least one task")
    tasks = [_task(t, where, i) for i, t in enumerate(tasks_raw)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{where}: key 'tasks': task {dup!r} is listed twice")
    # recipe and method options are checked now, not mid-run
    train = _get(raw, "train", dict, where) or {}
    method_options = _get(raw, "method_options", dict, where) or {}
    for method, opts in method_options.items():
        key = f"{where}: key 'method_options.{method}'"
        if not isinstance(opts, dict):
            raise UserError(f"{key} must be a mapping of option: value")
        try:
            build(get_method(method).Config, opts, key)
        except UserError as exc:  # name the suite file and key, whatever the registry said
            raise UserError(str(exc) if str(exc).startswith(where) else f"{key}: {exc}") from None
    build(TrainConfig, train, f"{where}: key 'train'")
    return Suite(name=name, path=where, tasks=tasks, layout=layout, description=_get(raw, "description", str, where) or "",
                 data_root=_get(raw, "data_root", str, where), prepare=prepare, backbone=backbone,
                 protocol=protocol, train=train, method_options=method_options)


def _task(raw: Any, where: str, index: int) -> Task:
    key = f"tasks[{index}]"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: key '{key}' must be a mapping with name, classes and group")
    _no_unknown(raw, {"name", "classes", "group"}, where, key + ".")
    name, classes = raw.get("name"), raw.get("classes")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: key '{key}.name' must be a task folder name, got {name!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise UserError(f"{where}: key '{key}.classes' must be a positive integer, got {classes!r}")
    return Task(name, classes, str(raw.get("group", "")))


def _get(raw: dict, key: str, kind: type, where: str, required: bool = False):
    value = raw.get(key)
    if value is None:
        if required:
            raise UserError(f"{where}: key {key!r} is required")
        return None
    if not isinstance(value, kind):
        raise UserError(f"{where}: key {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _no_unknown(raw: dict, allowed: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key '{prefix}{unknown[0]}'; valid: {', '.join(sorted(allowed))}")
