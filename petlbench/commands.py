"""What each `petlbench` verb does with its parsed arguments (cli.py builds the parser and runs them)."""
from __future__ import annotations

import json
import math
import sys

from petlbench.errors import UserError
from petlbench.options import parse_pairs


def cmd_run(args) -> int:
    from petlbench.engine.device import pick_device
    from petlbench.sweep.runner import run
    from petlbench.report.tables import render_records

    seeds = parse_seeds(args.seeds)
    if args.executor == "local":
        pick_device(args.device)  # a missing GPU is refused now, not after preparing data (Slurm: on the node)
    grid = parse_grid(args.grid)
    records = run(**run_arguments(args, seeds, grid), device=args.device, progress=False if args.quiet else None,
                  save_weights=not args.no_weights, executor=args.executor, workers=args.workers,
                  runs_per_job=args.runs_per_job, slurm=slurm_arguments(args), wait=not args.no_wait,
                  save_samples=not args.no_samples)
    failed = [r for r in records if r["status"] != "success"]
    if len(failed) < len(records):
        print()
        print(render_records(records, "md"))
    unsaved = [r for r in records if r.get("unsaved")]
    lost = [r for r in records if (r.get("weights") or {}).get("lost")]
    suites = sorted({r["suite"] for r in records if not r.get("unsaved")})
    if suites:
        print(f"records: {', '.join(f'{args.out}/{s}/' for s in suites)} (`petlbench table {args.out}` tabulates them all)")
    not_done = getattr(records, "not_done", 0)
    if failed:
        print(f"petlbench: {len(failed)} of {len(records)} runs failed; run the same command again to retry them",
              file=sys.stderr)
    for r in unsaved:
        u = r["unsaved"]
        print(f"petlbench: {u['meant_for']}: not written ({u['reason']}); " + (
            f"the record is at {u['rescued_to']}: move it there once --out is writable" if u["rescued_to"]
            else "the record could not be written anywhere and is lost"), file=sys.stderr)
    if lost:
        print(f"petlbench: {len(lost)} run(s) lost their task weights (their records say why); the same command "
              "again trains them again", file=sys.stderr)
    if not_done and not args.no_wait:
        print(f"petlbench: {not_done} run(s) did not finish; `petlbench status {args.out}` shows them and the same "
              "command again launches them", file=sys.stderr)
    return 1 if failed or unsaved or lost or (not_done and not args.no_wait) else 0


def parse_seeds(text: str) -> list[int]:
    from petlbench.sweep.runner import check_seeds
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    return check_seeds(seeds)


def run_arguments(args, seeds: list[int], grid: dict | None) -> dict:
    """What `run` and `status` share: the sweep's definition from the flags."""
    return dict(suite=args.suite or "demo", methods=args.methods, seeds=seeds,
                tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
                backbone=args.backbone, backbone_args=parse_pairs(args.backbone_args, ",", "--backbone-args"),
                checkpoint=args.checkpoint, random_init=args.random_init, mean=numbers(args.mean, "--mean"),
                std=numbers(args.std, "--std"), data_root=args.data_root, out=args.out if hasattr(args, "out")
                else args.results, train=train_overrides(args), protocol=args.protocol, recipe=args.recipe,
                grid=grid, cache_dir=getattr(args, "cache_dir", None), source=getattr(args, "source", None),
                shots=getattr(args, "shots", None), base_to_new=getattr(args, "base_to_new", False))


def slurm_arguments(args):
    if args.executor != "slurm":
        return None
    from petlbench.sweep.slurm import slurm_options
    flags = {"partition": args.partition, "time_min": args.time_min, "gpus": args.gpus, "cpus": args.cpus,
             "mem_gb": args.mem_gb, "max_parallel": args.max_parallel}
    if args.sbatch:
        flags["sbatch"] = {k: str(v) for k, v in parse_pairs(args.sbatch, ",", "--sbatch").items()}
    return slurm_options(args.slurm_config, args.slurm_profile, flags)


def cmd_status(args) -> int:
    from petlbench.sweep.status import records_status
    from petlbench.sweep.transfer_status import full_status
    from petlbench.sweep.runner import make_sweep
    from tabulate import tabulate
    if args.methods:
        sweep = make_sweep(**run_arguments(args, parse_seeds(args.seeds), parse_grid(args.grid)),
                           log=lambda line: None)
        rows, notes = full_status(sweep)  # with a transfer method's source and target runs
    else:
        from pathlib import Path
        if not Path(args.results).is_dir():
            raise UserError(f"{args.results}: no such folder of records")
        rows, notes = records_status(Path(args.results), args.suite)
    if args.format == "json":
        print(json.dumps({"rows": rows, "notes": notes}, indent=2))
        return 0
    print(tabulate(rows, headers="keys", tablefmt="github") if rows else "no runs")
    totals = {k: sum(r.get(k, 0) for r in rows) for k in ("done", "failed", "running", "missing") if rows and k in rows[0]}
    print(", ".join(f"{n} {k}" for k, n in totals.items()))
    for note in notes:
        print(f"  {note}")
    return 0


def train_overrides(args) -> dict:
    """--train pairs, and --eval-every N as the training setting eval_every (checked like the others)."""
    train = parse_pairs(args.train, ",", "--train")
    return train if args.eval_every is None else {**train, "eval_every": args.eval_every}


def parse_grid(text: str | None) -> dict | None:
    if text is None:
        return None
    from petlbench.options import load_yaml
    grid = load_yaml(text, "--grid")  # 1e-4 is a float; a key given twice is refused
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"--grid: expected a YAML mapping of lists, e.g. '{{lr: [0.1, 0.01]}}', got {text!r}")
    return grid


def numbers(text: str | None, flag: str) -> tuple[float, ...] | None:
    """--mean/--std: three finite numbers (R,G,B); a std must be positive (images are divided by it)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    positive = flag == "--std"
    if len(values) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise UserError(f"{flag}: expected three comma-separated {'positive ' if positive else ''}finite numbers "
                        f"(R,G,B), got {text!r}")
    return values


def cmd_table(args) -> int:
    from petlbench.report.tables import render
    if args.per_class:
        from petlbench.report.samples import per_class_table
        print(per_class_table(args.results, args.per_class, args.suite, args.format), end="")
        return 0
    print(render(args.results, args.format, suite=args.suite, published=args.published, report=args.report,
                 storage=args.storage, ece=args.ece, ppt=args.ppt), end="")
    return 0


def cmd_compare(args) -> int:
    from petlbench.report.compare import render
    print(render(args.results, args.a, args.b, args.format, suite=args.suite), end="")
    return 0


def cmd_plot(args) -> int:
    from petlbench.report.plots import plot
    if args.kind == "rank":
        from petlbench.report.ranks import plot_ranks
        for path in plot_ranks(args.results, suite=args.suite, out=args.out):
            print(path)
        return 0
    for path in plot(args.results, suite=args.suite, out=args.out, published=args.published):
        print(path)
    return 0


def cmd_report(args) -> int:
    from petlbench.report.page import write_report
    print(write_report(args.results, args.out, suite=args.suite))
    return 0


def cmd_params(args) -> int:
    from petlbench.backbone import BackboneSpec, check_backbone
    from petlbench.params import count_params
    from petlbench.plan import method_label
    from petlbench.registry import parse_method_list, refuse_unsupported

    if args.num_classes < 1:
        raise UserError(f"--num-classes: expected a positive integer, got {args.num_classes}")
    spec = BackboneSpec(args.backbone, parse_pairs(args.backbone_args, ",", "--backbone-args"), pretrained=False)
    rows, methods = [], parse_method_list(args.methods)
    refuse_unsupported(methods, check_backbone(spec), spec.name)
    for method in methods:
        rows.append({"method": method_label(method), **count_params(spec, method, args.num_classes).as_dict()})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate
        print(tabulate(rows, headers="keys", tablefmt="github", intfmt=","))
    return 0


def cmd_profile(args) -> int:
    from petlbench.tools.profile import profile
    rows = profile(args.methods, args.backbone, parse_pairs(args.backbone_args, ",", "--backbone-args"),
                   args.images, args.eval_images, epochs=args.epochs, train=parse_pairs(args.train, ",", "--train"),
                   device=args.device)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate
        print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


def cmd_bench(args) -> int:
    from petlbench.tools.bench import bench
    rows = bench(args.methods, args.suite, args.task, args.epochs, args.data_root, grid=not args.no_grid,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate
        print(tabulate(rows, headers="keys", tablefmt="github", missingval=""))
    return 0


def cmd_eval(args) -> int:
    from petlbench.data.cache import resolve_cache_dir
    from petlbench.tools.deploy import evaluate_record
    from petlbench.engine.device import pick_device
    result = evaluate_record(args.record, args.data_root, pick_device(args.device), resolve_cache_dir(args.cache_dir))
    verdict = "reproduced exactly" if result["same"] else "DIFFERS"
    print(f"{result['record']}: {result['metric']} {result['now']:.4%} on {result['images']} images; "
          f"recorded {result['recorded']:.4%}: {verdict}")
    return 0 if result["same"] else 1


def cmd_predict(args) -> int:
    from petlbench.tools.deploy import predict
    from petlbench.engine.device import pick_device
    if args.top < 1:
        raise UserError(f"--top: expected a positive integer, got {args.top}")
    rows = predict(args.record, args.images, args.top, pick_device(args.device))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        shown = ", ".join(f"{t['class']}{' (' + t['name'] + ')' if t['name'] else ''} {t['probability']:.1%}"
                          for t in row["top"])
        print(f"{row['image']}: {shown}")
    return 0


def cmd_export(args) -> int:
    from petlbench.tools.deploy import export_merged
    result = export_merged(args.record, args.out)
    print(f"{result['file']}: {result['model']} with a {result['num_classes']}-class head, "
          f"{result['tensors']} tensors, {result['bytes']:,} bytes (timm state dict: "
          f"timm.create_model('{result['model']}', num_classes={result['num_classes']}"
          + "".join(f", {k}={v!r}" for k, v in result["args"].items()) + ").load_state_dict(...))")
    return 0


def cmd_ls(args) -> int:
    if args.what == "suites":
        from petlbench.suite import load_suite, packaged_suites
        for name, path in sorted(packaged_suites().items()):
            suite = load_suite(str(path))
            aliases = f" (aliases: {', '.join(suite.aliases)})" if suite.aliases else ""
            print(f"{name}{aliases}: {len(suite.tasks)} tasks ({', '.join(t.name for t in suite.tasks)})")
        return 0
    from petlbench.recipes import RECIPES
    from petlbench.registry import available_methods, method_options_help
    for name, entry in sorted(available_methods().items()):
        cls = entry.load()
        print(f"{name}  [{entry.origin}]  {cls.description}")
        print(f"    options: {method_options_help(cls)}")
        departures = ", ".join(f"{k}={v}" for k, v in cls.train_defaults.items())
        print(f"    recipe:  {cls.recipe}" + (f" with {departures}" if departures else "")
              + (f"; tune grid {cls.tune_grid}" if cls.tune_grid else ""))
        rule = cls.decay_rule or (RECIPES[cls.recipe].train.get("decay_rule", "timm") if cls.recipe in RECIPES else "timm")
        print(f"    weight decay: {rule} rule (petlbench.engine.decay)")
        print(f"    families: {', '.join(cls.families)}" + ("; merges into the backbone (export --merged)"
                                                          if mergeable(cls) else ""))
        if cls.paper:
            print(f"    paper:   {cls.paper}")
        source = cls.defaults_source or (RECIPES[cls.recipe].defaults_source if cls.recipe in RECIPES else "")
        if source:
            print(f"    defaults: {source}")
    return 0


def mergeable(cls) -> bool:
    from petlbench.method import Method
    return cls.merge is not Method.merge


def cmd_data(args) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.data_command == "check":
        from petlbench.data.check import run_check
        return run_check(args.suite, args.data_root, tasks, strict=args.strict)
    if args.data_command == "show":
        from petlbench.data.show import run_show
        return run_show(args.suite, args.data_root, tasks, args.out, args.per_class)
    if args.data_command == "build":
        from petlbench.data.check import run_check
        from petlbench.data.tfds_build import build_vtab1k
        build_vtab1k(args.to, tasks, tfds_dir=args.tfds_dir, force=args.force)
        return run_check(args.suite, args.to, tasks)
    from petlbench.data.download import download
    return download(args.suite, args.to, repo=args.repo, archives=args.archive, tasks=tasks)
