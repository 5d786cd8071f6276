"""What each `petlbench` verb does with its parsed arguments (cli.py builds the parser and runs them)."""
from __future__ import annotations

import json
import math
import sys

from petlbench.errors import UserError
from petlbench.options import parse_pairs


def cmd_run(args) -> int:
    from petlbench.device import pick_device
    from petlbench.runner import run
    from petlbench.tables import render_records

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    pick_device(args.device)  # a missing GPU is refused now, not after preparing data
    grid = parse_grid(args.grid)
    records = run(suite=args.suite, methods=args.methods, seeds=seeds,
                  tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
                  backbone=args.backbone, backbone_args=parse_pairs(args.backbone_args, ",", "--backbone-args"),
                  checkpoint=args.checkpoint, random_init=args.random_init, mean=numbers(args.mean, "--mean"),
                  std=numbers(args.std, "--std"), data_root=args.data_root,
                  out=args.out, train=train_overrides(args), device=args.device,
                  protocol=args.protocol, recipe=args.recipe, grid=grid, cache_dir=args.cache_dir,
                  progress=False if args.quiet else None, save_weights=not args.no_weights)
    failed = [r for r in records if r["status"] != "success"]
    if len(failed) < len(records):
        print()
        print(render_records(records, "md"))
    suites = sorted({r["suite"] for r in records})
    print(f"records: {', '.join(f'{args.out}/{s}/' for s in suites)} (`petlbench table {args.out}` tabulates them all)")
    if failed:
        print(f"petlbench: {len(failed)} of {len(records)} runs failed; run the same command again to retry them",
              file=sys.stderr)
        return 1
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
    from petlbench.tables import render
    print(render(args.results, args.format, suite=args.suite, published=args.published, report=args.report,
                 storage=args.storage), end="")
    return 0


def cmd_plot(args) -> int:
    from petlbench.plots import plot
    for path in plot(args.results, suite=args.suite, out=args.out, published=args.published):
        print(path)
    return 0


def cmd_params(args) -> int:
    from petlbench.backbone import BackboneSpec, check_backbone
    from petlbench.params import build_model
    from petlbench.plan import method_label
    from petlbench.registry import parse_method_list, refuse_unsupported

    if args.num_classes < 1:
        raise UserError(f"--num-classes: expected a positive integer, got {args.num_classes}")
    spec = BackboneSpec(args.backbone, parse_pairs(args.backbone_args, ",", "--backbone-args"), pretrained=False)
    rows, methods = [], parse_method_list(args.methods)
    refuse_unsupported(methods, check_backbone(spec), spec.name)
    for method in methods:
        _, counts, _ = build_model(spec, method, args.num_classes, seed=0)
        rows.append({"method": method_label(method), **counts.as_dict()})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate
        print(tabulate(rows, headers="keys", tablefmt="github", intfmt=","))
    return 0


def cmd_profile(args) -> int:
    from petlbench.profile import profile
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
    from petlbench.speed import bench
    rows = bench(args.methods, args.suite, args.task, args.epochs, args.data_root, grid=not args.no_grid,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate
        print(tabulate(rows, headers="keys", tablefmt="github", missingval=""))
    return 0


def cmd_eval(args) -> int:
    from petlbench.cache import resolve_cache_dir
    from petlbench.deploy import evaluate_record
    from petlbench.device import pick_device
    result = evaluate_record(args.record, args.data_root, pick_device(args.device), resolve_cache_dir(args.cache_dir))
    verdict = "reproduced exactly" if result["same"] else "DIFFERS"
    print(f"{result['record']}: {result['metric']} {result['now']:.4%} on {result['images']} images; "
          f"recorded {result['recorded']:.4%}: {verdict}")
    return 0 if result["same"] else 1


def cmd_predict(args) -> int:
    from petlbench.deploy import predict
    from petlbench.device import pick_device
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
    from petlbench.deploy import export_merged
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
    if args.data_command == "check":
        from petlbench.datacheck import run_check
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        return run_check(args.suite, args.data_root, tasks)
    from petlbench.download import download
    return download(args.suite, args.to, repo=args.repo, archives=args.archive)
