"""`--protocol paper --source gps|dtl`: the shipped files are the converters' output, every released script's
settings reach the run planned for its task (two tasks each checked by hand against the CSV), a task or method the
source lacks is refused in one line, and `table` shows the runs beside the published rows (V-PETL Bench's)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest

from conftest import assert_one_line_error, petlbench_cli
from petlbench.records import SCHEMA, write_atomic
from petlbench.report.tables import render
from petlbench.settings import load_settings, packaged_sources
from petlbench.suite import load_suite
from petlbench.sweep.runner import make_sweep
from petlbench.tools.paper_settings import SOURCES, dump, reference_rows

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "paper_settings"  # copies of the shared reference files
TASKS = {"cifar_100": "cifar", "flowers102": "oxford_flowers102", "pets": "oxford_iiit_pet", "cub_2011": "CUB",
         "oxford_flowers": "OxfordFlowers", "stanford_cars": "StanfordCars", "stanford_dogs": "StanfordDogs"}
COLUMNS = {"cub": "CUB", "oxford_flowers": "OxfordFlowers", "stanford_dogs": "StanfordDogs",
           "stanford_cars": "StanfordCars"}
VTAB = [t.name for t in load_suite("vtab1k").tasks]


def vpetl_row(suite: str, method: str) -> dict[str, float]:
    """V-PETL Bench's row of `method` in results/published (read here independently of the converter)."""
    with (ROOT / "results" / "published" / f"published_{suite}.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["source_key"] == "vpetl" and r["method"] == method]
    assert len(rows) == 1 and rows[0]["selection"] == "test_best"
    tasks = VTAB if suite == "vtab1k" else list(COLUMNS) + ["nabirds"]
    return {COLUMNS.get(t, t): float(rows[0][t]) for t in tasks}


@pytest.mark.parametrize("source", ["gps", "dtl"])
def test_shipped_settings_are_the_converters_output(source):
    assert packaged_sources()[source].read_text() == dump(SOURCES[source](REFERENCE))  # byte for byte


def test_every_gps_script_is_a_row_with_its_arguments():
    settings, scripts = load_settings("gps"), reference_rows(REFERENCE / "gps_train_scripts.csv")
    assert len(settings.rows) == len(scripts) == 19 + 5
    tops = {"vtab1k": vpetl_row("vtab1k", "gps"), "fgvc": vpetl_row("fgvc", "gps")}
    for s in scripts:
        suite = "vtab1k" if s["benchmark"] == "vtab" else "fgvc"
        row = settings.row(suite, TASKS.get(s["task"], s["task"]), "gps")
        assert row.options == {"k": int(s["times_para"])}
        smoothing = {"label_smoothing": 0.1} if suite == "fgvc" else {}  # train_gps.py's default where not given
        assert row.train == {"lr": float(s["lr"]), "weight_decay": float(s["weight-decay"]),
                             "batch_size": int(s["batch-size"]), **smoothing}
        assert row.backbone_args == {"drop_path_rate": float(s["drop-path"])}
        assert row.top1 is None and row.best_top1 == tops[suite][row.task]
        assert ("--contrastiveve" in row.note) == (s["task"] == "flowers102")
    recipe = settings.recipe
    assert recipe["backbone"] == "vit_base_patch16_224.augreg_in21k"  # GPS's default_cfg: the augreg npz
    assert recipe["mean"] == recipe["std"] == [0.5, 0.5, 0.5] and recipe["train"]["optimizer"] == "adam"


def test_every_dtl_vtab_script_is_a_row_with_its_arguments():
    settings = load_settings("dtl")
    scripts = [s for s in reference_rows(REFERENCE / "dtl_train_scripts.csv") if s["benchmark"] == "vtab"]
    assert len(settings.rows) == len(scripts) == 2 * 19
    top = vpetl_row("vtab1k", "dtl")
    for s in scripts:
        plus = s["script"] == "train_dtl+.sh"
        row = settings.row("vtab1k", TASKS.get(s["task"], s["task"]), "dtl:fusion=3" if plus else "dtl")
        assert row.options == {"rank": 2, "beta": 100.0, "read_from": 0, "fusion": int(s["fusion_size"])}
        assert (row.options["fusion"] > 0) == plus
        assert row.train == {"lr": float(s["lr"])} and row.backbone_args == {"drop_path_rate": float(s["drop_path"])}
        assert row.best_top1 == (None if plus else top[row.task]) and row.top1 is None
    recipe = settings.recipe
    assert recipe["backbone"] == "vit_base_patch16_224.orig_in21k" and recipe["mean"] == [0.5, 0.5, 0.5]
    assert {k: recipe["train"][k] for k in ("optimizer", "weight_decay", "batch_size", "epochs", "warmup_epochs")} == \
        {"optimizer": "adamw", "weight_decay": 0.05, "batch_size": 32, "epochs": 100, "warmup_epochs": 10}


def plans(tmp_path, suite: str, source: str, methods: str) -> dict[tuple[str, str], object]:
    """(task, label) -> the planned run, on an empty data root and a random ViT-B/16 built on the meta device."""
    sweep = make_sweep(suite, methods, [0], data_root=str(tmp_path), out=str(tmp_path / "out"), protocol="paper",
                       source=source, random_init=True, log=lambda line: None)
    return {(task.name, sweep.paper.keys[id(m)]): sweep.plan(task, m, 0) for task in sweep.tasks for m in sweep.methods}


def test_gps_plans_each_task_with_its_released_settings(tmp_path):
    runs = plans(tmp_path, "vtab1k", "gps", "gps")
    assert len(runs) == 19 and all(p.backbone.name == "vit_base_patch16_224.augreg_in21k" for p in runs.values())
    # by hand from gps_train_scripts.csv: vtab,patch_camelyon: lr 0.004, wd 0, batch 32, drop-path 0, times_para 2;
    # vtab,diabetic_retinopathy: lr 0.002, batch 32, drop-path 0.2, times_para 1; dmlab: lr 0.0015, batch 16, 0.1
    for task, (lr, batch, drop_path, k) in {"patch_camelyon": (0.004, 32, 0.0, 2),
                                            "diabetic_retinopathy": (0.002, 32, 0.2, 1),
                                            "dmlab": (0.0015, 16, 0.1, 1)}.items():
        p = runs[(task, "gps")]
        assert (p.train.lr, p.train.weight_decay, p.train.batch_size, p.train.optimizer) == (lr, 0.0, batch, "adam")
        assert p.backbone.args["drop_path_rate"] == drop_path and p.method.config.k == k
        assert (p.train.epochs, p.train.warmup_epochs, p.train.eval_every, p.train.label_smoothing) == (100, 10, 10, 0)
    # fgvc,stanford_dogs: lr 0.0001, batch 64, times_para 1; fgvc,nabirds: times_para 20, drop-path 0.1; smoothing 0.1
    runs = plans(tmp_path, "fgvc", "gps", "gps")
    assert len(runs) == 5
    dogs, birds = runs[("StanfordDogs", "gps")], runs[("nabirds", "gps")]
    assert (dogs.train.lr, dogs.train.batch_size, dogs.method.config.k, dogs.train.label_smoothing) == \
        (0.0001, 64, 1, 0.1)
    assert (birds.method.config.k, birds.backbone.args["drop_path_rate"], birds.train.batch_size) == (20, 0.1, 32)


def test_dtl_and_dtl_plus_plan_each_task_with_its_released_settings(tmp_path):
    runs = plans(tmp_path, "vtab1k", "dtl", "dtl,dtl:fusion=3")
    assert len(runs) == 38
    # by hand from dtl_train_scripts.csv: kitti train_dtl.sh lr 0.008 drop_path 0.1 fusion 0, train_dtl+.sh lr 0.008
    # drop_path 0.2 fusion 4; clevr_count train_dtl.sh 0.001 / 0.2 / 0, train_dtl+.sh 0.0008 / 0.2 / 5
    for (task, label), (lr, drop_path, fusion) in {("kitti", "dtl"): (0.008, 0.1, 0),
                                                  ("kitti", "dtl:fusion=3"): (0.008, 0.2, 4),
                                                  ("clevr_count", "dtl"): (0.001, 0.2, 0),
                                                  ("clevr_count", "dtl:fusion=3"): (0.0008, 0.2, 5)}.items():
        p = runs[(task, label)]
        assert (p.train.lr, p.train.weight_decay, p.train.batch_size, p.train.optimizer) == (lr, 0.05, 32, "adamw")
        assert p.backbone.args["drop_path_rate"] == drop_path and p.backbone.name.endswith("orig_in21k")
        config = p.method.config
        assert (config.fusion, config.rank, config.beta, config.read_from) == (fusion, 2, 100.0, 0)
        assert config.add_from is None  # L / 2: after blocks 6-11 of ViT-B's 12, as --add_after_blocks 6-11
        assert p.train.decay_rule == "timm"  # DTL exempts '*.bias': of its trained tensors the head's bias


@pytest.mark.parametrize("args, needles", [
    (["--source", "dtl", "--suite", "fgvc", "--methods", "dtl"],
     ["no settings for dtl on task 'CUB' of suite 'fgvc'", "for suites vtab1k only"]),
    (["--source", "gps", "--suite", "vtab1k", "--methods", "dtl"], ["no settings for method 'dtl'", "it has gps"]),
    (["--source", "dtl", "--suite", "vtab1k", "--methods", "dtl:fusion=5"],
     ["no settings for method 'dtl:fusion=5'", "it has dtl, dtl:fusion=3"]),
])
def test_what_a_source_lacks_is_refused_in_one_line(tmp_path, args, needles):
    proc = petlbench_cli("run", "--protocol", "paper", "--data-root", str(tmp_path), "--random-init", "--out",
                         str(tmp_path / "out"), *args)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "out").exists()


def paper_record(task: str, source: str, label: str, backbone: str, top1: float) -> dict:
    """A successful `--protocol paper` record as the runner writes it (its `paper` key as sweep/paper.py makes)."""
    settings, tasks = load_settings(source), load_suite("vtab1k").tasks
    row, index = settings.row("vtab1k", task, label), VTAB.index(task)
    return {"schema": SCHEMA, "run_id": f"{task}-{source}-{label}", "status": "success", "suite": "vtab1k",
            "task": task, "task_index": index, "task_group": tasks[index].group, "seed": 0,
            "method": {"name": label.split(":")[0], "label": label},
            "backbone": {"name": backbone, "weights": "timm-pretrained"},
            "protocol": {"name": "paper", "source": source}, "data": {"root": "/data", "layout": "noah",
                                                                      "build": "noah-jpeg"},
            "metrics": {"test_top1": (top1 - 1) / 100, "test_curve": [[10, (top1 - 2) / 100], [50, top1 / 100]]},
            "params": {"trainable_excl_head": 20_000, "backbone": 85_798_656},
            "paper": {"source": source, "settings": {**row.settings(), "reported": row.reported()},
                      "label": f"{label} [{source}]"}}


@pytest.mark.parametrize("source, label, backbone", [("gps", "gps", "vit_base_patch16_224.augreg_in21k"),
                                                     ("dtl", "dtl", "vit_base_patch16_224.orig_in21k")])
def test_table_shows_paper_runs_beside_the_published_row(tmp_path, source, label, backbone):
    top = vpetl_row("vtab1k", label)
    ours = {t: top[t] + (0.5 if i % 2 else 3.0) for i, t in enumerate(VTAB)}  # best epoch: 10 within 1 point
    for t in VTAB:
        write_atomic(tmp_path / "vtab1k" / f"{t}-{source}.json", paper_record(t, source, label, backbone, ours[t]))
    text = render(tmp_path, "csv", report="max-test")
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).set_index("method")
    mine = [m for m in frame.index if m.startswith(f"{label} [{source}]")]
    published = [m for m in frame.index if m.startswith(f"published: {label} [vpetl (test_best, ")]
    assert len(mine) == 1 and len(published) == 1, list(frame.index)
    assert frame.loc[published[0], "dtd"] == f"{top['dtd']:.1f}" and frame.loc[mine[0], "dtd"] == f"{ours['dtd']:.1f}"
    md = render(tmp_path, "md", report="max-test")
    assert f"{label} [{source}]: reproduced within 1 point on 9 of 19 tasks; max |Δ| 3.0" in md
    warned = [line for line in md.splitlines() if line.startswith(f"⚠ {label}")]
    # both published rows carry the weights their code loads (GPS's: augreg, results/published/README.md); GPS's
    # row mixes builds (cifar from VPT's TFDS pipeline), which is said in words
    assert bool(warned) == (source == "gps") and all("the data build differs" in line and "weights differ" not in line
                                                     for line in warned), warned
