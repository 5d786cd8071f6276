"""The `petlbench` command: run, table, params, ls. Bad input ends in one line and exit code 2."""
from __future__ import annotations

import argparse
import json
import sys

from petlbench.errors import UserError
from petlbench.options import parse_pairs


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"petlbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("petlbench: interrupted; finished runs keep their records", file=sys.stderr)
        return 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petlbench", description="Compare parameter-efficient transfer learning methods.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run methods x tasks x seeds of a suite; one JSON record per run")
    r.add_argument("--methods", required=True, help="comma-separated: name or name:key=value[:key=value]")
    r.add_argument("--suite", default="demo", help="packaged suite name or path to a suite YAML (default: demo)")
    r.add_argument("--tasks", help="comma-separated subset of the suite's tasks")
    r.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    r.add_argument("--data-root", help="folder holding the task folders (else the suite's, else $PETLBENCH_DATA_ROOT)")
    r.add_argument("--backbone", help="any timm model name (replaces the suite's backbone)")
    r.add_argument("--backbone-args", default="", help="timm.create_model kwargs, e.g. img_size=224,drop_path_rate=0.1")
    r.add_argument("--checkpoint", help="local backbone weights: .safetensors, or a torch file (weights_only)")
    r.add_argument("--random-init", action="store_true", help="no pretrained weights at all (baselines, tests)")
    r.add_argument("--mean", help="normalisation mean, three numbers (default: the backbone's pretrained config)")
    r.add_argument("--std", help="normalisation std, three numbers (default: the backbone's pretrained config)")
    r.add_argument("--train", default="", help="training overrides, e.g. lr=0.01,epochs=5,batch_size=128")
    r.add_argument("--protocol", default="final", choices=["final", "tune"],
                   help="final: train on train+val, report test; tune: grid on train, select on val, then final")
    r.add_argument("--recipe", help="put every method on one named recipe (vpt, noah); default: each method's own")
    r.add_argument("--grid", help="tune grid as a YAML mapping, e.g. '{lr: [0.1, 0.01], weight_decay: [0, 1e-4]}' "
                                  "(default: the recipe's grid)")
    r.add_argument("--out", default="results", help="folder for run records (default: results)")
    r.add_argument("--cache-dir", help="decoded-image cache (default: $PETLBENCH_CACHE or ~/.cache/petlbench/decoded)")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("table", help="tabulate run records: method x task top-1, mean, params")
    t.add_argument("results", nargs="?", default="results", help="folder of records (default: results)")
    t.add_argument("--format", default="md", choices=["md", "csv", "latex"])
    t.add_argument("--suite", help="only this suite's records")
    t.set_defaults(func=cmd_table)

    c = sub.add_parser("params", help="count parameters of methods on a backbone, without data")
    c.add_argument("--backbone", required=True, help="timm model name (random weights; nothing is fetched)")
    c.add_argument("--backbone-args", default="", help="timm.create_model kwargs, e.g. img_size=32,depth=2")
    c.add_argument("--num-classes", type=int, required=True)
    c.add_argument("--methods", required=True, help="as for run")
    c.add_argument("--format", default="md", choices=["md", "json"])
    c.set_defaults(func=cmd_params)

    ls = sub.add_parser("ls", help="list methods (origin, options with defaults) or packaged suites")
    ls.add_argument("what", choices=["methods", "suites"])
    ls.set_defaults(func=cmd_ls)
    return p


def cmd_run(args) -> int:
    from petlbench.runner import run
    from petlbench.table import render_records

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    records = run(suite=args.suite, methods=args.methods, seeds=seeds,
                  tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
                  backbone=args.backbone, backbone_args=parse_pairs(args.backbone_args, ",", "--backbone-args"),
                  checkpoint=args.checkpoint, random_init=args.random_init, mean=numbers(args.mean, "--mean"),
                  std=numbers(args.std, "--std"), data_root=args.data_root,
                  out=args.out, train=parse_pairs(args.train, ",", "--train"), device=args.device,
                  protocol=args.protocol, recipe=args.recipe, grid=parse_grid(args.grid), cache_dir=args.cache_dir,
                  progress=False if args.quiet else None)
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


def parse_grid(text: str | None) -> dict | None:
    if text is None:
        return None
    import yaml
    try:
        grid = yaml.safe_load(text)
    except yaml.YAMLError:
        grid = None
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"--grid: expected a YAML mapping of lists, e.g. '{{lr: [0.1, 0.01]}}', got {text!r}")
    return grid


def numbers(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UserError(f"{flag}: expected three comma-separated numbers (R,G,B), got {text!r}")
    return values


def cmd_table(args) -> int:
    from petlbench.table import render
    print(render(args.results, args.format, suite=args.suite), end="")
    return 0


def cmd_params(args) -> int:
    from petlbench.backbone import BackboneSpec
    from petlbench.params import build_model
    from petlbench.registry import parse_method_list
    from petlbench.plan import method_label

    if args.num_classes < 1:
        raise UserError(f"--num-classes: expected a positive integer, got {args.num_classes}")
    spec = BackboneSpec(args.backbone, parse_pairs(args.backbone_args, ",", "--backbone-args"), pretrained=False)
    rows = []
    for method in parse_method_list(args.methods):
        _, counts = build_model(spec, method, args.num_classes, seed=0)
        rows.append({"method": method_label(method), **counts.as_dict()})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate
        print(tabulate(rows, headers="keys", tablefmt="github", intfmt=","))
    return 0


def cmd_ls(args) -> int:
    if args.what == "suites":
        from petlbench.suite import load_suite, packaged_suites
        for name, path in sorted(packaged_suites().items()):
            suite = load_suite(str(path))
            print(f"{name}: {len(suite.tasks)} tasks ({', '.join(t.name for t in suite.tasks)})")
        return 0
    from petlbench.registry import available_methods, method_options_help
    for name, entry in sorted(available_methods().items()):
        cls = entry.load()
        print(f"{name}  [{entry.origin}]  {cls.description}")
        print(f"    options: {method_options_help(cls)}")
        recipe = ", ".join(f"{k}={v}" for k, v in cls.train_defaults.items()) or "(training defaults)"
        print(f"    recipe:  {recipe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
