"""The `petlbench` command: run, status, table, compare, plot, report, params, data, profile, eval, predict, export, ls. Bad input: one line, exit code 2."""
from __future__ import annotations

import argparse
import sys

from petlbench import commands
from petlbench.errors import UserError


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
    except BrokenPipeError:  # `petlbench ls methods | head`: the reader left; nothing is wrong
        sys.stderr.close()
        return 0


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
    r.add_argument("--protocol", default="final", choices=["final", "tune", "paper"],
                   help="final: train on train+val, report test; tune: grid on train, select on val, then final; "
                        "paper: final runs with the per-task settings of --source")
    r.add_argument("--source", help="--protocol paper: a packaged settings source (petl_vision, ...) or a settings YAML")
    r.add_argument("--shots", type=int, metavar="K", help="few-shot: K training images per class, drawn per seed "
                   "(the same for every method); val for any choice: min(K, 4) per class; test: all of it")
    r.add_argument("--base-to-new", action="store_true", help="CoCoOp's protocol: train on the base half of each "
                   "task's classes, report base, new (classes never trained on) and their harmonic mean")
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
    r.add_argument("--no-samples", action="store_true",
                   help="do not save final runs' test predictions (per image: top-5 classes, probabilities, label)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_executor_flags(r)
    r.set_defaults(func=commands.cmd_run)

    st = sub.add_parser("status", help="what is done, failed (and why), running and missing, per task and method")
    st.add_argument("results", nargs="?", default="results", help="folder of records (default: results)")
    st.add_argument("--suite", help="with --methods: every run of that `run` command; alone: only its records")
    st.add_argument("--methods", help="as for run (with the same --tasks, --seeds, --protocol, --train, ...)")
    st.add_argument("--train", default="", help="as for run")
    for flag in ("--tasks", "--data-root", "--backbone", "--checkpoint", "--recipe", "--grid",
                 "--mean", "--std"):
        st.add_argument(flag, help="as for run")
    st.add_argument("--backbone-args", default="", help="as for run")
    st.add_argument("--random-init", action="store_true", help="as for run")
    st.add_argument("--seeds", default="0", help="as for run")
    st.add_argument("--eval-every", type=int, metavar="N", help="as for run")
    st.add_argument("--protocol", default="final", choices=["final", "tune", "paper"])
    st.add_argument("--source", help="as for run")
    st.add_argument("--shots", type=int, metavar="K", help="as for run")
    st.add_argument("--base-to-new", action="store_true", help="as for run")
    st.add_argument("--format", default="md", choices=["md", "json"])
    st.set_defaults(func=commands.cmd_status)

    t = sub.add_parser("table", help="tabulate run records: method x task top-1, mean, params")
    t.add_argument("results", nargs="?", default="results", help="folder of records (default: results)")
    t.add_argument("--format", default="md", help="md, csv, latex (booktabs, best per column in bold) or html")
    t.add_argument("--suite", help="only this suite's records")
    t.add_argument("--storage", action="store_true",
                   help="add the size of the saved task weights (trainable tensors + head), KB per task")
    t.add_argument("--report", default="last", choices=["last", "max-test"],
                   help="last: the last-epoch test top-1 (the protocol's number); max-test: the max over the "
                        "recorded test curve (--eval-every), selection on the test set, labelled as such")
    t.add_argument("--published", default="auto",
                   help="published rows and differences: auto (per method the source closest to your runs' "
                        "selection rule, data build and weights, when the backbone matches), all (every source and "
                        "the spread across them), always (whatever the backbone), never")
    t.add_argument("--per-class", metavar="TASK",
                   help="instead: per-class test accuracy of each method on TASK (from the runs' samples)")
    t.add_argument("--ece", action="store_true",
                   help="add a column: expected calibration error (15 bins), mean over tasks and seeds")
    t.add_argument("--ppt", action="store_true",
                   help="add V-PETL Bench's PPT: mean/100 x exp(-log10(trainable params / 1e7 + 1))")
    t.set_defaults(func=commands.cmd_table)

    cm = sub.add_parser("compare", help="A vs B paired over (task, seed): mean difference, bootstrap interval, "
                                        "Wilcoxon p and a verdict, per group and overall")
    cm.add_argument("results", help="folder of records")
    cm.add_argument("a", metavar="A", help="a method label as the table shows it, e.g. vpt_deep:tokens=10")
    cm.add_argument("b", metavar="B", help="the other method label")
    cm.add_argument("--suite", help="only this suite's records")
    cm.add_argument("--format", default="md", choices=["md", "json"])
    cm.set_defaults(func=commands.cmd_compare)

    pl = sub.add_parser("plot", help="accuracy vs trainable parameters (log x), PNG and SVG")
    pl.add_argument("results", nargs="?", default="results", help="folder of records (default: results)")
    pl.add_argument("--suite", help="only this suite's records")
    pl.add_argument("--out", help="file stem (default: RESULTS/<suite>_accuracy_vs_params); .png and .svg are added")
    pl.add_argument("--published", default="auto",
                    help="published points and the spread across sources: auto (when the backbone matches), "
                         "all, always, never")
    pl.add_argument("--kind", default="params", choices=["params", "rank"],
                    help="params (default): accuracy vs trainable parameters with the Pareto frontier; rank: the "
                         "critical-difference diagram (average rank over tasks, Friedman + Nemenyi), RESULTS/<suite>_rank")
    pl.set_defaults(func=commands.cmd_plot)

    rp = sub.add_parser("report", help="one self-contained HTML page: tables with their sources, the accuracy-vs-"
                                       "params plot with the frontier, the rank plot, flagged tasks, per-class accuracy")
    rp.add_argument("results", nargs="?", default="results", help="folder of records (default: results)")
    rp.add_argument("-o", "--out", default="report.html", help="the page to write (default: report.html)")
    rp.add_argument("--suite", help="only this suite's records")
    rp.set_defaults(func=commands.cmd_report)

    c = sub.add_parser("params", help="count parameters of methods on a backbone, without data")
    c.add_argument("--backbone", required=True, help="timm model name (random weights; nothing is fetched)")
    c.add_argument("--backbone-args", default="", help="timm.create_model kwargs, e.g. img_size=32,depth=2")
    c.add_argument("--num-classes", type=int, required=True)
    c.add_argument("--methods", required=True, help="as for run")
    c.add_argument("--format", default="md", choices=["md", "json"])
    c.set_defaults(func=commands.cmd_params)

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
    pr.set_defaults(func=commands.cmd_profile)

    bn = sub.add_parser("bench", help="petlbench beside a reference loop (PIL + DataLoader every epoch, fp32): "
                                      "wall time, speed-up, both accuracies")
    bn.add_argument("--methods", default="linear,full,adapter,vpt_deep", help="as for run")
    bn.add_argument("--suite", default="demo", help="a suite (default: demo, its pre-trained tiny ViT)")
    bn.add_argument("--task", default="shapes", help="the task to train on (default: shapes)")
    bn.add_argument("--epochs", type=int, default=10)
    bn.add_argument("--data-root", help="as for run")
    bn.add_argument("--no-grid", action="store_true", help="skip the tune protocol's 40-point linear grid")
    bn.add_argument("--format", default="md", choices=["md", "json"])
    bn.set_defaults(func=commands.cmd_bench)

    ev = sub.add_parser("eval", help="rebuild a run from its record and saved weights; reproduce its test accuracy")
    ev.add_argument("record", help="a run record (.json) whose task weights (.safetensors) sit beside it")
    ev.add_argument("--data-root", help="where the task folders are now (default: the record's data root)")
    ev.add_argument("--cache-dir", help="decoded-image cache (as for run)")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=commands.cmd_eval)

    pd = sub.add_parser("predict", help="top classes of image files with a trained task (record + weights)")
    pd.add_argument("record", help="a run record (.json) whose task weights sit beside it")
    pd.add_argument("images", nargs="+", help="image files")
    pd.add_argument("--top", type=int, default=5, help="classes shown per image (default: 5)")
    pd.add_argument("--device", default="auto")
    pd.add_argument("--format", default="text", choices=["text", "json"])
    pd.set_defaults(func=commands.cmd_predict)

    ex = sub.add_parser("export", help="a plain timm state dict of a trained task, for methods that merge")
    ex.add_argument("record", help="a run record (.json) whose task weights sit beside it")
    ex.add_argument("out", help="the .safetensors file to write")
    ex.add_argument("--merged", action="store_true", required=True,
                    help="fold the method into the backbone's own weights (LoRA, SSF, FacT, BitFit, full, ...)")
    ex.set_defaults(func=commands.cmd_export)

    ls = sub.add_parser("ls", help="list methods (origin, options with defaults) or packaged suites")
    ls.add_argument("what", choices=["methods", "suites"])
    ls.set_defaults(func=commands.cmd_ls)

    d = sub.add_parser("data", help="check a data root (leakage too), download or build a suite's data, or picture its tasks")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="per task: found, images per split, classes, data build, unreadable files; split sanity")
    dc.add_argument("--suite", required=True, help="vtab1k, fgvc, another packaged suite, or a suite YAML path")
    dc.add_argument("--data-root", help="folder holding the task folders (else the suite's, else $PETLBENCH_DATA_ROOT)")
    dc.add_argument("--tasks", help="comma-separated subset of the suite's tasks")
    dc.add_argument("--strict", action="store_true",
                    help="train/test leakage (an image in a training split and in test) is an error, not a warning")
    dd = dsub.add_parser("download", help="fetch (or take local archives), unpack into --to, then check")
    dd.add_argument("suite", help="vtab1k or fgvc (their public mirrors on the Hugging Face hub); pacs, officehome or "
                                  "terraincognita (DomainBed's sources)")
    dd.add_argument("--to", required=True, help="folder to download and unpack into")
    dd.add_argument("--tasks", help="comma-separated subset of the suite's tasks (fgvc: datasets)")
    dd.add_argument("--repo", help="another Hugging Face dataset repo OWNER/NAME in the suite's layout")
    dd.add_argument("--archive", action="append",
                    help="a local .zip/.tar[.gz] (repeatable): vtab1k: instead of the mirror; fgvc: alone, offline, "
                         "or with --repo for a dataset the mirror lacks")
    ds = dsub.add_parser("show", help="one PNG per task: a few training images per class, class counts per split")
    ds.add_argument("--suite", required=True, help="as for check")
    ds.add_argument("--data-root", help="as for check")
    ds.add_argument("--tasks", help="comma-separated subset of the suite's tasks")
    ds.add_argument("--out", default="data-show", help="folder for the PNGs (default: data-show)")
    ds.add_argument("--per-class", type=int, default=4, help="training images shown per class (default: 4)")
    db = dsub.add_parser("build", help="write VTAB-1k as lossless PNGs in the NOAH layout from prepared TFDS datasets")
    db.add_argument("suite", choices=["vtab1k"], help="vtab1k (VTAB-1k's official splits, as task_adaptation defines)")
    db.add_argument("--from", dest="source", required=True, choices=["tfds"],
                    help="tfds: the TFDS datasets prepared in --tfds-dir (pip install petlbench[tfds])")
    db.add_argument("--to", required=True, help="data root to write the task folders into")
    db.add_argument("--tasks", help="comma-separated subset of the suite's tasks")
    db.add_argument("--tfds-dir", help="TFDS data dir holding the prepared datasets (default: TFDS's own)")
    db.add_argument("--force", action="store_true", help="replace task folders that already exist")
    d.set_defaults(func=commands.cmd_data)
    return p


def add_executor_flags(r: argparse.ArgumentParser) -> None:
    """Where the runs execute: here (one after another, or N workers) or on Slurm through submitit."""
    g = r.add_argument_group("execution (see README 'Run on a cluster')")
    g.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local (default): this machine; slurm: submit the jobs through submitit")
    g.add_argument("--workers", type=int, default=1, help="local: N runs at once, the cores (and GPUs) split")
    g.add_argument("--runs-per-job", type=int, default=1, help="runs bundled into one job (default: 1)")
    g.add_argument("--no-wait", action="store_true", help="slurm: submit and return; the same command collects")
    g.add_argument("--slurm-config", help="YAML file of named Slurm profiles (default: ./petlbench-slurm.yaml, "
                                          "~/.config/petlbench/slurm.yaml)")
    g.add_argument("--slurm-profile", help="a profile of that file (default: its 'default' profile)")
    g.add_argument("--partition", help="slurm partition")
    g.add_argument("--time-min", type=int, help="slurm time limit per job, minutes (default: 60)")
    g.add_argument("--gpus", type=int, help="GPUs per slurm job (default: 0)")
    g.add_argument("--cpus", type=int, help="CPUs per slurm job, its torch threads (default: 4)")
    g.add_argument("--mem-gb", type=float, help="memory per slurm job, GB (default: 16)")
    g.add_argument("--max-parallel", type=int, help="slurm jobs in flight at most (default: 256)")
    g.add_argument("--sbatch", default="", help="more sbatch options, e.g. account=proj,qos=high")


if __name__ == "__main__":
    sys.exit(main())
