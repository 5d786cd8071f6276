"""`--protocol paper --source e2vpt|snell`: the shipped files are their converters' output and equal the released
commands and scripts (read here from the reference CSVs independently of the converters), plan one run per task
with that task's settings, refuse what the sources lack in one line, and meet the published rows in `table`."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import assert_one_line_error, petlbench_cli
from petlbench.errors import UserError
from petlbench.records import SCHEMA, write_atomic
from petlbench.report.tables import render
from petlbench.settings import load_settings, packaged_sources
from petlbench.suite import load_suite
from petlbench.sweep.runner import make_sweep
from petlbench.tools.paper_settings import SOURCES, dump, reference_rows

REFERENCE = Path(__file__).parent / "data" / "paper_settings"
PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
ORIG = "vit_base_patch16_224.orig_in21k"
FGVC = {"cub": "CUB", "nabirds": "nabirds", "oxford_flowers": "OxfordFlowers", "stanford_dogs": "StanfordDogs",
        "stanford_cars": "StanfordCars"}


def published_row(suite: str, source_key: str, method: str) -> dict[str, float]:
    with (PUBLISHED / f"published_{suite}.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["source_key"] == source_key and r["method"] == method]
    assert len(rows) == 1
    return {FGVC[k]: float(rows[0][k]) for k in FGVC}


def commands(block: str) -> list[dict[str, str]]:
    return [c for c in reference_rows(REFERENCE / "e2vpt_commands.csv") if c["block"] == block]


def sweep(suite: str, methods: str, source: str, tmp_path: Path):
    return make_sweep(suite, methods, [0], data_root=str(tmp_path), out=str(tmp_path / "out"), protocol="paper",
                      source=source, random_init=True, log=lambda line: None)


@pytest.mark.parametrize("source", ["e2vpt", "snell"])
def test_shipped_settings_are_regenerated_byte_for_byte(source):
    assert packaged_sources()[source].read_text() == dump(SOURCES[source](REFERENCE))


def test_e2vpt_rows_are_the_origin_commands():
    settings = load_settings("e2vpt")
    vtab = commands("Documented Version (Origin 5runs on VTAB-1k)")
    fgvc = commands("Documented Version (Origin 5runs on FGVC)")
    assert len(settings.rows) == len(vtab) + len(fgvc) == 19 + 5
    stems = {"cifar100": "cifar", "svhn_cropped": "svhn", "diabetic_retinopathy_detection": "diabetic_retinopathy",
             "clevr_distance": "clevr_dist", "dsprites_location": "dsprites_loc", "dsprites_orientation": "dsprites_ori",
             "kitti_distance": "kitti", "smallnorb_azimuth": "smallnorb_azi", "smallnorb_evaluation": "smallnorb_ele",
             "cub": "CUB", "flowers": "OxfordFlowers", "dogs": "StanfordDogs", "cars": "StanfordCars"}
    tops = published_row("fgvc", "davpt", "e2vpt")
    for suite, block in (("vtab1k", vtab), ("fgvc", fgvc)):
        for c in block:
            stem = Path(c["config_file"]).stem
            task = stems.get(stem, stem)
            row = settings.row(suite, task, "e2vpt")
            assert row.options == {"tokens": int(c["MODEL.P_VK.NUM_TOKENS_P"]),
                                   "kv_tokens": int(c["MODEL.P_VK.NUM_TOKENS"]), "share_kv": True,
                                   "kv_init": "kaiming", "dropout": 0.1}
            assert (row.train["lr"], row.train["weight_decay"]) == (float(c["SOLVER.BASE_LR"]),
                                                                   float(c["SOLVER.WEIGHT_DECAY"]))
            assert row.train.get("batch_size", 64) == int(c["DATA.BATCH_SIZE"])
            assert row.best_top1 is None and row.top1 == (tops[task] if suite == "fgvc" else None)
    recipe = settings.recipe["train"]
    assert (recipe["optimizer"], recipe["lr_scale_batch"], recipe["decay_rule"]) == ("sgd", None, "vpt")
    assert "Pruning and Rewind" in settings.notes["e2vpt"] and "ssl mae" in settings.notes["e2vpt"]


def test_snell_rows_are_the_snell_scripts_and_snella_is_left_out():
    settings = load_settings("snell")
    scripts = reference_rows(REFERENCE / "snell_train_scripts.csv")
    kept = [s for s in scripts if s["variant"] != "snella32"]
    assert len(scripts) == 48 and len(settings.rows) == len(kept) == 19 + 15
    tops = {32: published_row("fgvc", "snell", "snell:rank=32"), 16: published_row("fgvc", "snell", "snell:rank=16")}
    fgvc = {"stanfordcar": "StanfordCars", "cub": "CUB", "stanforddog": "StanfordDogs",
            "oxfordflower": "OxfordFlowers", "nabirds": "nabirds"}
    for s in kept:
        rank = int(s["low_rank_dim"])
        suite = "vtab1k" if s["benchmark"] == "vtab" else "fgvc"
        row = settings.row(suite, fgvc.get(s["data-set"], s["data-set"]), "snell" if rank == 32 else f"snell:rank={rank}")
        assert row.options == {"rank": rank, "sparsity": float(s["init_thres"])}
        assert row.train == {"lr": float(s["lr"]), "weight_decay": float(s["weight-decay"]),
                             "batch_size": int(s["batch-size"]), "epochs": int(s["epochs"])}
        assert row.top1 is None and row.best_top1 == (tops[rank][row.task] if suite == "fgvc" and rank in tops
                                                      else None)
    assert "snella32" in settings.notes["snell"]
    assert settings.recipe["train"]["eval_every"] == 10 and settings.recipe["train"]["decay_rule"] == "timm"


def test_e2vpt_plans_every_vtab_task_with_its_command(tmp_path):
    s = sweep("vtab1k", "e2vpt", "e2vpt", tmp_path)
    plans = {task.name: s.plan(task, s.methods[0], 0) for task in s.tasks}
    assert len(plans) == 19
    by_hand = {  # command.txt via e2vpt_commands.csv: NUM_TOKENS_P, NUM_TOKENS, BASE_LR, WEIGHT_DECAY
        "caltech101": (32, 5, 0.01, 0.001), "cifar": (5, 5, 2.5, 0.01), "patch_camelyon": (10, 10, 0.01, 0.001),
        "oxford_flowers102": (1, 1, 0.01, 0.001)}
    for task, (tokens, kv_tokens, lr, wd) in by_hand.items():
        p = plans[task]
        assert (p.method.config.tokens, p.method.config.kv_tokens) == (tokens, kv_tokens)
        assert (p.train.lr, p.train.weight_decay, p.train.batch_size, p.train.optimizer) == (lr, wd, 64, "sgd")
        assert p.train.lr_scale_batch is None and p.train.decay_rule == "vpt"
        assert p.backbone.name == ORIG and p.backbone.args["drop_path_rate"] == 0.0
        assert p.method.config.prune_tokens == 0 and p.method.config.share_kv


def test_snell_plans_every_vtab_task_with_its_script(tmp_path):
    s = sweep("vtab1k", "snell", "snell", tmp_path)
    plans = {task.name: s.plan(task, s.methods[0], 0) for task in s.tasks}
    assert len(plans) == 19
    by_hand = {  # scripts/vtab/snell32/vit_<task>_snell.sh: init_thres, lr, weight-decay, batch-size, epochs
        "dtd": (0.995, 0.001, 0.01, 64, 200), "dmlab": (0.0, 0.001, 0.0001, 8, 100),
        "patch_camelyon": (0.15, 0.0007, 0.05, 16, 100), "caltech101": (0.4, 0.001, 0.01, 16, 200)}
    for task, (sparsity, lr, wd, batch, epochs) in by_hand.items():
        p = plans[task]
        assert (p.method.config.rank, p.method.config.sparsity) == (32, sparsity)
        assert (p.train.lr, p.train.weight_decay, p.train.batch_size, p.train.epochs) == (lr, wd, batch, epochs)
        assert p.train.optimizer == "adamw" and p.train.eval_every == 10 and p.backbone.args["drop_path_rate"] == 0.1
    fgvc = sweep("fgvc", "snell:rank=16", "snell", tmp_path)
    cub = fgvc.plan(next(t for t in fgvc.tasks if t.name == "CUB"), fgvc.methods[0], 0)
    assert (cub.method.config.rank, cub.method.config.sparsity, cub.train.batch_size) == (16, 0.3, 32)
    assert len(fgvc.tasks) == 5


@pytest.mark.parametrize("source, suite, methods, needles", [
    ("snell", "vtab1k", "snell:rank=8", ["no settings for snell:rank=8 on task", "for suites fgvc only"]),
    ("snell", "vtab1k", "lora", ["no settings for method 'lora'", "snell, snell:rank=16, snell:rank=8"]),
    ("e2vpt", "vtab1k", "e2vpt:prune_tokens=50", ["no settings for method 'e2vpt:prune_tokens=50'", "it has e2vpt"]),
])
def test_what_a_source_lacks_is_refused_in_one_line(tmp_path, source, suite, methods, needles):
    proc = petlbench_cli("run", "--protocol", "paper", "--source", source, "--suite", suite, "--methods", methods,
                         "--data-root", str(tmp_path), "--random-init", "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, f"--source {source}", *needles)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="no settings for e2vpt on task 'shapes' of suite 'demo'; it has e2vpt for "
                                        "suites fgvc, vtab1k only"):
        load_settings("e2vpt").row("demo", "shapes", "e2vpt")  # (planning the demo suite would build its data)


def paper_record(suite: str, task: str, index: int, label: str, source: str, top1: float, reported: dict,
                 curve: bool = False) -> dict:
    """A successful `--protocol paper` record as the runner writes it (sweep/paper.py's `paper` key)."""
    name = label.split(":")[0]
    r = {"schema": SCHEMA, "run_id": f"{task}-{label}-{source}", "status": "success", "suite": suite, "task": task,
         "task_index": index, "task_group": "fgvc", "seed": 0, "method": {"name": name, "label": label},
         "backbone": {"name": ORIG, "weights": "timm-pretrained"},
         "protocol": {"name": "paper", "source": source}, "data": {"root": "/data", "layout": suite},
         "metrics": {"test_top1": top1 / 100}, "params": {"trainable_excl_head": 1000, "backbone": 85_798_656},
         "paper": {"source": source, "label": f"{label} [{source}]",
                   "settings": {"method": label, "reported": reported}}}
    if curve:
        r["metrics"]["test_curve"] = [[10, (top1 - 2) / 100], [20, (top1 + 0.5) / 100], [30, top1 / 100]]
    return r


def test_table_sets_the_paper_runs_beside_the_published_rows(tmp_path):
    """Hand-written FGVC records: SNELL-32 (its published label snell:rank=32 is petlbench's `snell`) under
    `--report max-test` meets SNELL Table 1's row; E2VPT's last epoch meets the DA-VPT row; both reproduce."""
    tasks = [t.name for t in load_suite("fgvc").tasks]
    snell, e2vpt = load_settings("snell"), load_settings("e2vpt")
    for i, task in enumerate(tasks):
        s, e = snell.row("fgvc", task, "snell"), e2vpt.row("fgvc", task, "e2vpt")
        for r in (paper_record("fgvc", task, i, "snell", "snell", s.best_top1 - 0.5, s.reported(), curve=True),
                  paper_record("fgvc", task, i, "e2vpt", "e2vpt", e.top1 - 0.3, e.reported())):
            write_atomic(tmp_path / "fgvc" / f"{r['run_id']}.json", r)
    best = render(tmp_path, "md", report="max-test")
    assert "published: snell:rank=32 [snell (test_best, other: VPT FGVC json splits, orig_in21k)] †" in best
    assert "Δ snell [snell] [max test] vs snell" in best
    assert "snell [snell]: reproduced within 1 point on 5 of 5 tasks" in best  # the curve's best is +0.0 of theirs
    last = render(tmp_path, "md")
    assert "published: e2vpt [davpt (unknown, other: VPT FGVC json splits, orig_in21k)]" in last
    assert "Δ e2vpt [e2vpt] vs davpt" in last
    assert "e2vpt [e2vpt]: reproduced within 1 point on 5 of 5 tasks; max |Δ| 0.3" in last


def test_a_paper_row_with_options_meets_the_published_row_of_its_label(tmp_path):
    """`fact:variant=tt [fact]` is compared with a FacT-TT row, not with FacT-TK's (`fact`) as the name alone gave."""
    fact = load_settings("fact")
    for i, task in enumerate(t.name for t in load_suite("vtab1k").tasks):
        row = fact.row("vtab1k", task, "fact:variant=tt")
        r = paper_record("vtab1k", task, i, "fact:variant=tt", "fact", row.best_top1, row.reported(), curve=True)
        r["task_group"] = load_suite("vtab1k").tasks[i].group
        write_atomic(tmp_path / "vtab1k" / f"{r['run_id']}.json", r)
    best = render(tmp_path, "md", report="max-test")
    assert "published: fact:variant=tt [" in best and "published: fact [" not in best
    assert "Δ fact:variant=tt [fact] [max test] vs" in best
