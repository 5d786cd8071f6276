"""The `run` entry point (CLI and API): a command -> a Sweep (petlbench.sweep.phases) -> phases of jobs -> an executor.

Everything that can be wrong with the command (suite, methods, options, grid, backbone, data root,
--out) is found here, before any job starts, on the machine where the command was typed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from petlbench.engine import threads
from petlbench.backbone import check_backbone
from petlbench.data.cache import resolve_cache_dir
from petlbench.data.shots import check_shots
from petlbench.engine.preparers import prepare_suite
from petlbench.errors import UserError
from petlbench.sweep.executors import InProcess, LocalWorkers
from petlbench.sweep.jobs import say
from petlbench import outputs
from petlbench.options import build
from petlbench.data import datanames
from petlbench.plan import DATA_ROOT_ENV, resolve_backbone, resolve_data_root
from petlbench.registry import parse_method_list, refuse_unsupported
from petlbench.specs import PROTOCOLS, TrainConfig
from petlbench.suite import load_suite
from petlbench.plan import method_label
from petlbench.settings import load_settings, packaged_sources, refuse_missing_methods
from petlbench.sweep.paper import Paper, row_of
from petlbench.sweep.phases import Sweep, run_sweep
from petlbench.sweep.slurm import SlurmExecutor, SlurmOptions
from petlbench.sweep.tune import check_grid
from petlbench.sweep import noah_search, transfer


def run(suite: str = "demo", methods: str | list[str] = "linear", seeds: Iterable[int] = (0,),
        tasks: list[str] | None = None, backbone: str | None = None, backbone_args: dict | None = None,
        checkpoint: str | None = None, random_init: bool = False, mean: tuple | None = None,
        std: tuple | None = None, data_root: str | None = None, out: str | Path = "results",
        train: dict | None = None, recipe: str | None = None, protocol: str = "final", grid: dict | None = None,
        device: str = "auto", cache_dir: str | Path | None = None, progress: bool | None = None,
        log: Callable[[str], None] | None = None, save_weights: bool = True, executor: str = "local",
        workers: int = 1, runs_per_job: int = 1, slurm=None, wait: bool = True,
        save_samples: bool = True, source: str | None = None, shots: int | None = None,
        base_to_new: bool = False) -> list[dict]:
    """Run methods x tasks x seeds of a suite (what `petlbench run` does); returns the final records.
    `executor`: local (in this process, or `workers` processes) or slurm (`slurm`: SlurmOptions).
    `source`: with protocol "paper", a packaged settings source or the path of a settings YAML.
    `shots`: K training images per class per seed (the few-shot protocol); None: all of them.
    `base_to_new`: CoCoOp's protocol, train on the base half of the classes, test on base and new."""
    log = log or say
    the_sweep = make_sweep(suite, methods, seeds, tasks, backbone, backbone_args, checkpoint, random_init, mean, std,
                           data_root, out, train, recipe, protocol, grid, device, cache_dir, progress, save_weights,
                           log, source, save_samples=save_samples, shots=shots, base_to_new=base_to_new)
    check_writable(the_sweep.out)
    runner = make_executor(executor, workers, runs_per_job, slurm, wait)
    threads.register()  # this process's share of the cores, re-read every epoch
    try:
        return run_sweep(the_sweep, runner, log)
    finally:
        threads.unregister()


def make_executor(name: str, workers: int = 1, runs_per_job: int = 1, slurm: dict | None = None,
                  wait: bool = True):
    if runs_per_job < 1:
        raise UserError(f"--runs-per-job: expected a positive integer, got {runs_per_job}")
    if name == "local":
        if not wait:
            raise UserError("--no-wait: only with --executor slurm (local jobs end with this command)")
        return InProcess() if workers == 1 else LocalWorkers(workers, runs_per_job)
    if name == "slurm":
        return SlurmExecutor(slurm or SlurmOptions(), runs_per_job, wait)
    raise UserError(f"--executor: expected local or slurm, got {name!r}")


def make_sweep(suite, methods, seeds, tasks=None, backbone=None, backbone_args=None, checkpoint=None,
               random_init=False, mean=None, std=None, data_root=None, out="results", train=None, recipe=None,
               protocol="final", grid=None, device="auto", cache_dir=None, progress=None, save_weights=True,
               log: Callable[[str], None] = say, source=None, save_samples: bool = True, shots=None,
               base_to_new: bool = False) -> Sweep:
    """The command, checked and resolved (the demo's data prepared), as one Sweep value."""
    the_suite = load_suite(suite)
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    shots = check_shots(shots)
    if base_to_new and protocol == "paper":
        raise UserError("--base-to-new: not with --protocol paper (its sources' settings are for all of a task's classes)")
    paper = paper_source(protocol, source, methods if isinstance(methods, str) else ",".join(methods), recipe, grid,
                         backbone_args)
    if paper is not None:
        backbone, checkpoint, mean, std = paper_backbone(paper.settings, backbone, checkpoint, mean, std)
    method_list = parse_method_list(methods if isinstance(methods, str) else ",".join(methods),
                                    the_suite.method_options if paper is None else None)
    overrides = dict(train or {})
    build(TrainConfig, overrides, "--train")
    for method in method_list if grid is not None else []:
        check_grid(grid, method, "--grid")
    selected = the_suite.select(tasks)
    seeds = check_seeds(list(seeds))
    root = resolve_data_root(the_suite, data_root)
    prepare_suite(the_suite, root, log=log)
    if not root.is_dir():
        raise UserError(f"data root {root}: folder not found (from --data-root, the suite or ${DATA_ROOT_ENV})")
    datanames.resolve(the_suite, root)  # `classnames_from:` (NABirds' classes.txt, CoOp's split files)
    spec = resolve_backbone(the_suite, root, backbone, backbone_args, checkpoint, random_init, mean, std)
    refuse_unsupported(method_list, check_backbone(spec), spec.name)
    cache = resolve_cache_dir(cache_dir)
    the_sweep = Sweep(the_suite, selected, method_list, seeds, spec, overrides, recipe, grid, protocol, root,
                      Path(out), device, cache, save_weights, progress, save_samples=save_samples,
                      shots=shots, base_to_new=bool(base_to_new))
    if paper is not None:  # every (task, method) must have a row: refused now, not after hours of training
        the_sweep.paper = Paper(paper.settings, {id(m): method_label(m) for m in method_list}, paper.backbone_args)
        for task in selected:
            for method in method_list:
                row_of(the_sweep, task, method)
    for method in method_list:  # built once on the meta device (plan_one): options that do not fit are refused now
        the_sweep.plan(selected[0], method, seeds[0])
    transfer.check(the_sweep)  # a transfer method's sources (MVLPT): in the suite, named, under --protocol final
    noah_search.check(the_sweep)  # noah:subnet=search: under --protocol final only
    return the_sweep


def paper_source(protocol: str, source: str | None, methods: str, recipe, grid, backbone_args) -> Paper | None:
    """--protocol paper needs a --source and takes no grid or recipe (the source's own); --source needs it."""
    if protocol != "paper":
        if source is not None:
            raise UserError(f"--source {source}: only with --protocol paper (the source's per-task settings)")
        return None
    if not source:
        raise UserError(f"--protocol paper: name the source of the settings with --source (packaged: "
                        f"{', '.join(packaged_sources()) or 'none'}; or the path of a settings YAML)")
    for flag, value in (("--grid", grid), ("--recipe", recipe)):
        if value is not None:
            raise UserError(f"{flag}: not with --protocol paper, which trains with the source's own settings")
    settings = load_settings(source)
    refuse_missing_methods(methods, settings)
    return Paper(settings, {}, dict(backbone_args or {}))


def paper_backbone(settings, backbone, checkpoint, mean, std):
    """The source's backbone (unless --backbone or --checkpoint) and normalisation (unless --mean/--std)."""
    r = settings.recipe
    if not backbone and not checkpoint and r.get("backbone"):
        backbone = r["backbone"]
    return backbone, checkpoint, mean or r.get("mean"), std or r.get("std")


MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take 0..2**32-1; a larger seed fails every run


def check_seeds(seeds: list) -> list[int]:
    """Seeds are checked with the command: a seed no generator takes would fail every run, one record each."""
    if not seeds:
        raise UserError("--seeds: expected at least one seed, e.g. 0 or 0,1,2")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise UserError(f"--seeds: expected integers from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
    return seeds


def check_writable(out: Path) -> None:
    """Find an unwritable --out (a file, read-only, full) before hours of training, not when the record is due."""
    outputs.check_writable(out, "--out", "records")
