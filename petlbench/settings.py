"""The papers' own per-task settings, as data: what `run --protocol paper --source KEY` trains with.

A settings file is YAML (packaged: `benchmarks/settings/<source>.yaml`; or a user's own path): the source, where
its settings come from, the source's recipe (backbone, normalisation, training values for every row) and one row
per (suite, task, method) with the method options, training values and backbone arguments the source released,
and the test top-1 it reported for that task. Rows of methods petlbench lacks stay in the file and are refused
when asked for. Every key is checked on load; an error names the file, the row and the key.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import as_dict, build, finite, read_yaml
from petlbench.registry import available_methods, parse_method_spec
from petlbench.specs import INTERPOLATIONS, TrainConfig

TOP_KEYS = {"source", "title", "origin", "converted", "selection", "reported", "recipe", "notes", "rows"}
RECIPE_KEYS = {"backbone", "backbone_args", "mean", "std", "interpolation", "train", "departures"}
ROW_KEYS = {"suite", "task", "method", "options", "train", "backbone_args", "top1", "best_top1", "note"}
EXPECTED = "a petlbench settings YAML (source, recipe, rows; see README 'The papers' own settings')"


@dataclass
class Row:
    suite: str
    task: str
    method: str  # the label a user asks for with --methods ('lora', 'fact:variant=tt')
    options: dict[str, Any]
    train: dict[str, Any]
    backbone_args: dict[str, Any]
    top1: float | None  # the source's test top-1 (%) for this task with these settings (its last epoch)
    best_top1: float | None  # the best test epoch of that run (selected on test), where the source gives it
    note: str = ""

    def settings(self) -> dict[str, Any]:
        """What the run trains with (recorded; part of the run's identity through the resolved configuration)."""
        return {"method": self.method, "options": self.options, "train": self.train,
                "backbone_args": self.backbone_args}

    def reported(self) -> dict[str, Any]:
        return {"top1": self.top1, "best_top1": self.best_top1}


@dataclass
class Settings:
    source: str
    file: Path
    sha256: str
    title: str
    origin: dict[str, Any]
    recipe: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # per method label: how the source's method maps onto ours

    def known_methods(self) -> list[str]:
        return sorted({r.method for r in self.rows})

    def row(self, suite: str, task: str, key: str) -> Row:
        """The row of (suite, task, method label); missing ones are one line naming what is missing."""
        rows = [r for r in self.rows if r.method == key]
        if not rows:
            raise UserError(f"--source {self.source} ({self.file}): no settings for method {key!r}; it has "
                            f"{', '.join(self.known_methods())}")
        for r in rows:
            if r.suite == suite and r.task == task:
                return r
        tasks = [r.task for r in rows if r.suite == suite]
        has = f"on tasks {', '.join(tasks)}" if tasks else \
            f"for suites {', '.join(sorted({r.suite for r in rows}))} only"
        raise UserError(f"--source {self.source} ({self.file}): no settings for {key} on task {task!r} of suite "
                        f"{suite!r}; it has {key} {has}")


def settings_dir() -> Path:
    return Path(str(importlib.resources.files("petlbench.benchmarks") / "settings"))


def packaged_sources() -> dict[str, Path]:
    folder = settings_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def load_settings(source: str) -> Settings:
    """A packaged source by name, or the path of a settings YAML."""
    known = packaged_sources()
    if source in known:
        return parse_settings(known[source])
    path = Path(source).expanduser()
    if source.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"--source: {path}: file not found; expected {EXPECTED}")
        return parse_settings(path)
    raise UserError(f"--source: unknown source {source!r}; known: {', '.join(known) or 'none'} (or the path of "
                    "a settings YAML)")


def parse_settings(path: Path) -> Settings:
    raw = read_yaml(path, EXPECTED)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected {EXPECTED}, got {type(raw).__name__}")
    _keys(raw, TOP_KEYS, path, "top level")
    for key in ("source", "rows"):
        if key not in raw:
            raise UserError(f"{path}: key {key!r} is missing; expected {EXPECTED}")
    if not isinstance(raw["source"], str) or not raw["source"]:
        raise UserError(f"{path}: key 'source' expects a name, got {raw['source']!r}")
    recipe = _mapping(raw.get("recipe") or {}, path, "recipe")
    _keys(recipe, RECIPE_KEYS, path, "recipe")
    check_recipe(recipe, path)
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise UserError(f"{path}: key 'rows' expects a non-empty list of rows")
    rows, seen = [], {}
    for i, item in enumerate(raw["rows"], 1):
        row = parse_row(item, path, i, recipe)
        key = (row.suite, row.task, row.method)
        if key in seen:
            raise UserError(f"{path}: row {i}: {row.method} on {row.suite}/{row.task} is also row {seen[key]}")
        seen[key] = i
        rows.append(row)
    return Settings(raw["source"], path.resolve(), hashlib.sha256(path.read_bytes()).hexdigest(),
                    str(raw.get("title") or raw["source"]), _mapping(raw.get("origin") or {}, path, "origin"),
                    recipe, rows, {str(k): str(v) for k, v in _mapping(raw.get("notes") or {}, path, "notes").items()})


def check_recipe(recipe: dict[str, Any], path: Path) -> None:
    build(TrainConfig, _mapping(recipe.get("train") or {}, path, "recipe.train"), f"{path}: recipe.train")
    _finite(_mapping(recipe.get("backbone_args") or {}, path, "recipe.backbone_args"), path, "recipe.backbone_args")
    for key in ("mean", "std"):
        value = recipe.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise UserError(f"{path}: key 'recipe.{key}' expects three finite numbers (R, G, B), got {value!r}")
    if recipe.get("interpolation") not in (None, *INTERPOLATIONS):
        raise UserError(f"{path}: key 'recipe.interpolation' expects one of {', '.join(INTERPOLATIONS)}, got "
                        f"{recipe['interpolation']!r}")
    if recipe.get("backbone") is not None and not isinstance(recipe["backbone"], str):
        raise UserError(f"{path}: key 'recipe.backbone' expects a timm model name, got {recipe['backbone']!r}")


def parse_row(item: Any, path: Path, i: int, recipe: dict[str, Any]) -> Row:
    where = f"{path}: row {i}"
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected a mapping of {', '.join(sorted(ROW_KEYS))}, got {item!r}")
    _keys(item, ROW_KEYS, path, f"row {i}")
    for key in ("suite", "task", "method"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise UserError(f"{where}: key {key!r} expects a name, got {item.get(key)!r}")
    options = _mapping(item.get("options") or {}, path, f"row {i} key 'options'")
    train = _mapping(item.get("train") or {}, path, f"row {i} key 'train'")
    backbone_args = _mapping(item.get("backbone_args") or {}, path, f"row {i} key 'backbone_args'")
    build(TrainConfig, {**(recipe.get("train") or {}), **train}, f"{where}: key 'train'")
    _finite(backbone_args, path, f"row {i} key 'backbone_args'")
    name = item["method"].split(":")[0]
    if name in available_methods():  # methods petlbench lacks stay in the file and are refused when asked for
        base = parse_method_spec(item["method"])
        build(base.Config, {**as_dict(base.config), **options}, f"{where}: key 'options' of {name}")
    reported = {}
    for key in ("top1", "best_top1"):
        value = item.get(key)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0 <= value <= 100):
            raise UserError(f"{where}: key {key!r} expects a test top-1 in percent (0-100) or nothing, got {value!r}")
        reported[key] = None if value is None else float(value)
    return Row(item["suite"], item["task"], item["method"], options, train, backbone_args, reported["top1"],
               reported["best_top1"], str(item.get("note") or ""))


def with_options(method: Method, options: dict[str, Any], where: str) -> Method:
    """The method with the row's options on top of the ones asked for."""
    if not options:
        return method
    return type(method)(build(method.Config, {**as_dict(method.config), **options}, where))


def refuse_missing_methods(text: str, settings: Settings) -> None:
    """A method the source has settings for but petlbench lacks (repadapter, difffit): one line, not 'unknown'."""
    known = available_methods()
    for spec in (s.strip() for s in text.split(",")):
        name = spec.split(":")[0].strip()
        if name and name not in known and any(r.method.split(":")[0] == name for r in settings.rows):
            raise UserError(f"--source {settings.source}: its settings include {name!r}, but petlbench has no "
                            f"method {name!r} (`petlbench ls methods` lists them)")


def _keys(raw: dict, allowed: set[str], path: Path, where: str) -> None:
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise UserError(f"{path}: {where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(allowed))}")


def _mapping(value: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{path}: {where} expects a mapping, got {value!r}")
    return dict(value)


def _finite(values: dict[str, Any], path: Path, where: str) -> None:
    for key, value in values.items():
        if not finite(value):
            raise UserError(f"{path}: {where}: {key!r} expects finite numbers, got {value!r}")

