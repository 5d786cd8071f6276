"""The `run` entry point (CLI and API): a command -> RunPlans -> execute each, one JSON record per run."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from petlbench.backbone import check_backbone
from petlbench import threads
from petlbench.cache import resolve_cache_dir
from petlbench.data import SplitCache
from petlbench.device import pick_device
from petlbench.errors import UserError
from petlbench.execute import execute
from petlbench.options import build
from petlbench.plan import DATA_ROOT_ENV, method_label, plan_one, resolve_backbone, resolve_data_root
from petlbench.registry import parse_method_list, refuse_unsupported
from petlbench.specs import PROTOCOLS, TrainConfig
from petlbench.suite import load_suite
from petlbench.tune import check_grid, run_tune


def run(suite: str = "demo", methods: str | list[str] = "linear", seeds: Iterable[int] = (0,),
        tasks: list[str] | None = None, backbone: str | None = None, backbone_args: dict | None = None,
        checkpoint: str | None = None, random_init: bool = False, mean: tuple | None = None,
        std: tuple | None = None, data_root: str | None = None, out: str | Path = "results",
        train: dict | None = None, recipe: str | None = None, protocol: str = "final", grid: dict | None = None,
        device: str = "auto", cache_dir: str | Path | None = None, progress: bool | None = None,
        log: Callable[[str], None] | None = None, save_weights: bool = True) -> list[dict]:
    """Run methods x tasks x seeds of a suite (what `petlbench run` does); returns the final records."""
    log = log or say
    the_suite = load_suite(suite)
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    method_list = parse_method_list(methods if isinstance(methods, str) else ",".join(methods),
                                    the_suite.method_options)
    overrides = dict(train or {})
    build(TrainConfig, overrides, "--train")
    for method in method_list if grid is not None else []:
        check_grid(grid, method, "--grid")
    selected = the_suite.select(tasks)
    seeds = list(seeds)
    if not seeds:
        raise UserError("--seeds: expected at least one seed, e.g. 0 or 0,1,2")
    out, dev = Path(out), pick_device(device)
    root = resolve_data_root(the_suite, data_root)
    if the_suite.prepare == "demo":
        from petlbench.demo import prepare
        prepare(root, the_suite, log=log)
    if not root.is_dir():
        raise UserError(f"data root {root}: folder not found (from --data-root, the suite or ${DATA_ROOT_ENV})")
    spec = resolve_backbone(the_suite, root, backbone, backbone_args, checkpoint, random_init, mean, std)
    refuse_unsupported(method_list, check_backbone(spec), spec.name)
    check_writable(out)
    cache = SplitCache(resolve_cache_dir(cache_dir))
    threads.register()  # this run's share of the cores, re-read every epoch
    try:
        return sweep(the_suite, selected, method_list, seeds, spec, overrides, recipe, grid, protocol, root, out, dev,
                     cache, progress, log, save_weights)
    finally:
        threads.unregister()


def sweep(the_suite, selected, method_list, seeds, spec, overrides, recipe, grid, protocol, root, out, dev, cache,
          progress, log, save_weights) -> list[dict]:
    if protocol == "tune":
        return run_tune(the_suite, selected, method_list, seeds, spec, overrides, recipe, grid, root, out, dev,
                        cache, progress, log, save_weights)
    plans = [plan_one(the_suite, task, m, spec, seed, overrides, recipe, the_suite.protocol("final"), root)
             for task in selected for m in method_list for seed in seeds]  # task-major: decode each task once
    return [execute(p, out, dev, cache, progress, log,
                    f"[{i}/{len(plans)}] {p.suite.name}/{p.task.name} {method_label(p.method)} seed {p.seed}",
                    save_weights=save_weights)
            for i, p in enumerate(plans, 1)]


def say(line: str) -> None:
    """Progress lines reach a log file as each run ends (nohup, `| tee`, Slurm logs), not minutes later."""
    print(line, flush=True)


def check_writable(out: Path) -> None:
    """Find an unwritable --out (a file, read-only, full) before hours of training, not when the record is due."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".petlbench-write-check-") as probe:
            probe.write(b"\0" * (1 << 20))  # a record is a few KB; a disk without 1 MB to spare is full
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write records there ({exc.strerror or exc})") from None
