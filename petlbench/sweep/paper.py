"""The `paper` protocol: each method on each task with the per-task settings its source released (no grid), final
runs only (trainval -> test, as `final`), so a paper's table is one command.

Precedence, lowest first. Training: TrainConfig defaults < the source's recipe (the settings file's
`recipe.train`) < the task's row < --train. Backbone: the suite's (or --backbone; the source's `recipe.backbone`
replaces the suite's when --backbone and --checkpoint are not given) < the source's `recipe.backbone_args` < the
row's `backbone_args` < --backbone-args; mean/std/interpolation: the source's unless --mean/--std. The method: its
class defaults < the options asked for in --methods (they select the rows: `fact:variant=tt`) < the row's options;
the method's own paper recipe, its departures and the suite's `train:` and `method_options:` play no part. What a
run used is in its record (`paper`, `train`, `method.options`, `backbone.args`) and in its identity.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from petlbench.method import Method
from petlbench.options import build
from petlbench.params import meta_counts
from petlbench.plan import RunPlan, backbone_for, method_label
from petlbench.recipes import Recipe
from petlbench.settings import Row, Settings, with_options
from petlbench.specs import Task, TrainConfig
from petlbench.sweep.jobs import Unit

REPORT = "last epoch with the source's per-task settings; no selection on the evaluation split"


@dataclass
class Paper:
    """A sweep's source: its settings, and what the command line sets above them."""
    settings: Settings
    keys: dict[int, str]  # id(method) -> the label that selects its rows (options asked for, no suite defaults)
    backbone_args: dict[str, Any]  # --backbone-args, which beat the rows

    def recipe(self) -> Recipe:
        r, s = self.settings.recipe, self.settings
        origin = ", ".join(f"{k} {v}" for k, v in s.origin.items())
        return Recipe(name=f"paper:{s.source}", source=f"{s.title}" + (f" ({origin})" if origin else ""),
                      train=dict(r.get("train") or {}), grid={}, backbone_args=dict(r.get("backbone_args") or {}),
                      preprocessing={k: r[k] for k in ("mean", "std", "interpolation") if r.get(k) is not None},
                      defaults_source=f"per-task settings of source {s.source}: {s.file.name} (sha256 "
                                      f"{s.sha256[:16]})")


def protocol(sweep) -> dict[str, Any]:
    return {**sweep.suite.protocol("final"), "name": "paper", "source": sweep.paper.settings.source,
            "report": REPORT}


def row_of(sweep, task: Task, method: Method) -> Row:
    return sweep.paper.settings.row(sweep.suite.name, task.name, sweep.paper.keys[id(method)])


def plan(sweep, task: Task, method: Method, seed: int) -> RunPlan:
    """One run with the row's settings, built on the meta device first (options that do not fit are refused)."""
    row, recipe = row_of(sweep, task, method), sweep.paper.recipe()
    where = f"{sweep.paper.settings.file}: {row.method} on {row.suite}/{row.task}"
    method = with_options(method, row.options, f"{where}: options")
    method = method.for_task(task)  # an option meaning a per-task setting (noah's subnet=released)
    train = build(TrainConfig, {**recipe.train, **row.train, **sweep.overrides}, f"{where}: train")
    spec = dataclasses.replace(sweep.backbone, args={**sweep.backbone.args, **row.backbone_args,
                                                     **sweep.paper.backbone_args})
    backbone = backbone_for(spec, recipe, method)
    meta_counts(backbone, method)
    return RunPlan(sweep.suite, task, method, backbone, seed, train, recipe, protocol(sweep), sweep.data_root)


def record_extra(sweep, task: Task, method: Method) -> dict[str, Any]:
    """The record's `paper` key: the source, the resolved settings of this task, the file and its hash."""
    s, row = sweep.paper.settings, row_of(sweep, task, method)
    note = " ".join(filter(None, [s.notes.get(row.method, ""), row.note]))
    settings = {**row.settings(), "reported": row.reported(), **({"note": note} if note else {})}
    if sweep.overrides:
        settings["command_line"] = dict(sweep.overrides)  # --train beat the file: said, never hidden
    return {"paper": {"source": s.source, "settings": settings, "file": str(s.file), "sha256": s.sha256,
                      "recipe": s.recipe, "label": f"{row.method} [{s.source}]"}}


def units(sweep) -> list[Unit]:
    """A unit per run, task-major as `final`; each record carries its `paper` settings."""
    combos = [(task, method, seed) for task in sweep.tasks for method in sweep.methods for seed in sweep.seeds]
    out = []
    for i, (task, method, seed) in enumerate(combos, 1):
        p = plan(sweep, task, method, seed)
        where = f"[{i}/{len(combos)}] {sweep.suite.name}/{task.name} {method_label(p.method)} seed {seed}"
        out.append(Unit([p], [f"{where} ({sweep.paper.settings.source})"], record_extra(sweep, task, method)))
    return out
