"""The `petlbench` command: run, table, plot, params, data, profile, eval, predict, export, ls. Bad input: one line, exit code 2."""
from __future__ import annotations

import argparse
import json
import math
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


class Parser(argparse.ArgumentParser):
    """argparse's own errors (a missing flag, `--num-classes abc`) are one line and exit 2, as ours are."""

    def error(self, message: str):
        self.exit(2, f"petlbench: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="petlbench", description="Compare parameter-efficient transfer learning methods.")
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
    r.add_argument("--eval-every", type=int, metavar="N",
                   help="also score the test split every N epochs: a recorded curve, never used for any choice "
                        "(`table --report max-test` shows its max, labelled as selected on test)")
    r.add_argument("--no-weights", action="store_true",
                   help="do not save each run's task weights (trained tensors + head, safetensors beside the record)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("table", help="tabulate run records: method x task top-1, mean, params")
    t.add_argument("results", nargs="?", default="results", help="folder of records (default: results)")
    t.add_argument("--format", default="md", help="md, csv or latex (booktabs, best per column in bold)")
    t.add_argument("--suite", help="only this suite's records")
    t.add_argument("--storage", action="store_true",
                   help="add the size of the saved task weights (trainable tensors + head), KB per task")
    t.add_argument("--report", default="last", choices=["last", "max-test"],
                   help="last: the last-epoch test top-1 (the protocol's number); max-test: the max over the "
                        "recorded test curve (--eval-every), selection on the test set, labelled as such")
    t.add_argument("--published", default="auto",
                   help="published rows and differences: auto (when the backbone matches), always, never")
    t.set_defaults(func=cmd_table)

    pl = sub.add_parser("plot", help="accuracy vs trainable parameters (log x), PNG and SVG")
    pl.add_argument("results", nargs="?", default="results", help="folder of records (default: results)")
    pl.add_argument("--suite", help="only this suite's records")
    pl.add_argument("--out", help="file stem (default: RESULTS/<suite>_accuracy_vs_params); .png and .svg are added")
    pl.add_argument("--published", default="auto",
                    help="published points: auto (when the backbone matches), always, never")
    pl.set_defaults(func=cmd_plot)

    c = sub.add_parser("params", help="count parameters of methods on a backbone, without data")
    c.add_argument("--backbone", required=True, help="timm model name (random weights; nothing is fetched)")
    c.add_argument("--backbone-args", default="", help="timm.create_model kwargs, e.g. img_size=32,depth=2")
    c.add_argument("--num-classes", type=int, required=True)
    c.add_argument("--methods", required=True, help="as for run")
    c.add_argument("--format", default="md", choices=["md", "json"])
    c.set_defaults(func=cmd_params)

    pr = sub.add_parser("profile", help="throughput and peak memory of methods on a synthetic VTAB-sized task")
    pr.add_argument("--methods", required=True, help="as for run")
    pr.add_argument("--backbone", default="vit_base_patch16_224", help="timm model name (random weights)")
    pr.add_argument("--backbone-args", default="", help="timm.create_model kwargs")
    pr.add_argument("--images", type=int, default=1000, help="training images (default: 1000, as VTAB-1k)")
    pr.add_argument("--eval-images", type=int, default=2000)
    pr.add_argument("--epochs", type=int, default=2)
    pr.add_argument("--train", default="", help="training overrides, e.g. batch_size=256,precision=bf16")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--format", default="md", choices=["md", "json"])
    pr.set_defaults(func=cmd_profile)

    ev = sub.add_parser("eval", help="rebuild a run from its record and saved weights; reproduce its test accuracy")
    ev.add_argument("record", help="a run record (.json) whose task weights (.safetensors) sit beside it")
    ev.add_argument("--data-root", help="where the task folders are now (default: the record's data root)")
    ev.add_argument("--cache-dir", help="decoded-image cache (as for run)")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=cmd_eval)

    pd = sub.add_parser("predict", help="top classes of image files with a trained task (record + weights)")
    pd.add_argument("record", help="a run record (.json) whose task weights sit beside it")
    pd.add_argument("images", nargs="+", help="image files")
    pd.add_argument("--top", type=int, default=5, help="classes shown per image (default: 5)")
    pd.add_argument("--device", default="auto")
    pd.add_argument("--format", default="text", choices=["text", "json"])
    pd.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="a plain timm state dict of a trained task, for methods that merge")
    ex.add_argument("record", help="a run record (.json) whose task weights sit beside it")
    ex.add_argument("out", help="the .safetensors file to write")
    ex.add_argument("--merged", action="store_true", required=True,
                    help="fold the method into the backbone's own weights (LoRA, SSF, FacT, BitFit, full, ...)")
    ex.set_defaults(func=cmd_export)

    ls = sub.add_parser("ls", help="list methods (origin, options with defaults) or packaged suites")
    ls.add_argument("what", choices=["methods", "suites"])
    ls.set_defaults(func=cmd_ls)

    d = sub.add_parser("data", help="check a data root against a suite, or download a suite's data and check it")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="per task: found, images per split, classes, unreadable files")
    dc.add_argument("--suite", required=True, help="vtab1k, fgvc, another packaged suite, or a suite YAML path")
    dc.add_argument("--data-root", help="folder holding the task folders (else the suite's, else $PETLBENCH_DATA_ROOT)")
    dc.add_argument("--tasks", help="comma-separated subset of the suite's tasks")
    dd = dsub.add_parser("download", help="fetch (or take local archives), unpack into --to, then check")
    dd.add_argument("suite", help="vtab1k (public NOAH-layout mirror on the Hugging Face hub) or fgvc")
    dd.add_argument("--to", required=True, help="folder to download and unpack into")
    dd.add_argument("--repo", help="a Hugging Face dataset repo OWNER/NAME holding the data (required for fgvc)")
    dd.add_argument("--archive", action="append", help="local .zip/.tar[.gz] to unpack instead (repeatable)")
    d.set_defaults(func=cmd_data)
    return p


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
    from petlbench.registry import available_methods, method_options_help
    for name, entry in sorted(available_methods().items()):
        cls = entry.load()
        print(f"{name}  [{entry.origin}]  {cls.description}")
        print(f"    options: {method_options_help(cls)}")
        departures = ", ".join(f"{k}={v}" for k, v in cls.train_defaults.items())
        print(f"    recipe:  {cls.recipe}" + (f" with {departures}" if departures else ""))
    return 0


def cmd_data(args) -> int:
    if args.data_command == "check":
        from petlbench.datacheck import run_check
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        return run_check(args.suite, args.data_root, tasks)
    from petlbench.download import download
    return download(args.suite, args.to, repo=args.repo, archives=args.archive)


if __name__ == "__main__":
    sys.exit(main())
