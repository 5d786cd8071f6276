"""`--protocol paper --source repadapter`: the shipped file is the converter's output, every released repblock and
repattn config is a row with its scale (read here from the reference CSV independently of the converter), planning
gives one run per task with its config's settings (two tasks each checked by hand), what the source lacks is
refused in one line, and `table` shows the runs beside RepAdapter's published row (V-PETL Bench's)."""
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
REFERENCE = ROOT / "tests" / "data" / "paper_settings"
VTAB = [t.name for t in load_suite("vtab1k").tasks]
ATTN = "repadapter:placement=attn"


def vpetl_row() -> dict[str, float]:
    with (ROOT / "results" / "published" / "published_vtab1k.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["source_key"] == "vpetl" and r["method"] == "repadapter"]
    assert len(rows) == 1 and rows[0]["selection"] == "test_best"
    return {t: float(rows[0][t]) for t in VTAB}


def test_shipped_settings_are_the_converters_output():
    assert packaged_sources()["repadapter"].read_text() == dump(SOURCES["repadapter"](REFERENCE))  # byte for byte


def test_every_repblock_and_repattn_config_is_a_row_with_its_scale():
    settings, configs = load_settings("repadapter"), reference_rows(REFERENCE / "repadapter_configs.csv")
    released = [c for c in configs if c["variant"] in ("repblock", "repattn")]
    assert len(settings.rows) == len(released) == 2 * 19 and len(configs) == 2 * 19 + 5  # + 5 few-shot, left out
    top = vpetl_row()
    for c in released:
        label = "repadapter" if c["variant"] == "repblock" else ATTN
        row = settings.row("vtab1k", c["task"], label)
        assert row.options == {"bottleneck": 8, "scale": float(c["scale"])}
        assert row.train == {} and row.backbone_args == {} and row.top1 is None
        assert row.best_top1 == (top[c["task"]] if label == "repadapter" else None)  # repattn: no published row
    assert {r.task for r in settings.rows} == set(VTAB)
    assert any("repblock_few_shot" in d and "shot count" in d for d in settings.recipe["departures"])
    recipe = settings.recipe
    assert recipe["backbone"] == "vit_base_patch16_224.orig_in21k" and recipe["mean"] == [0.485, 0.456, 0.406]
    assert recipe["backbone_args"] == {"drop_path_rate": 0.1}
    assert {k: recipe["train"][k] for k in ("optimizer", "lr", "weight_decay", "batch_size", "epochs",
                                            "warmup_epochs", "decay_rule")} == \
        {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001, "batch_size": 64, "epochs": 100,
         "warmup_epochs": 10, "decay_rule": "all"}  # train.py: AdamW(trainable, lr=1e-3, weight_decay=1e-4)


def test_repblock_and_repattn_plan_each_task_with_its_released_scale(tmp_path):
    sweep = make_sweep("vtab1k", f"repadapter,{ATTN}", [0], data_root=str(tmp_path), out=str(tmp_path / "out"),
                       protocol="paper", source="repadapter", random_init=True, log=lambda line: None)
    runs = {(task.name, sweep.paper.keys[id(m)]): sweep.plan(task, m, 0) for task in sweep.tasks for m in sweep.methods}
    assert len(runs) == 38
    # by hand from repadapter_configs.csv: repblock,dsprites_ori 0.1; repblock,caltech101 5; repattn,dsprites_ori 5;
    # repattn,caltech101 10; repblock,resisc45 5; repattn,resisc45 0.1
    for (task, label), (scale, placement) in {("dsprites_ori", "repadapter"): (0.1, "block"),
                                              ("caltech101", "repadapter"): (5.0, "block"),
                                              ("resisc45", "repadapter"): (5.0, "block"),
                                              ("dsprites_ori", ATTN): (5.0, "attn"),
                                              ("caltech101", ATTN): (10.0, "attn"),
                                              ("resisc45", ATTN): (0.1, "attn")}.items():
        p = runs[(task, label)]
        config = p.method.config
        assert (config.scale, config.placement, config.bottleneck, config.groups, config.dropout) == \
            (scale, placement, 8, 2, 0.1)
        assert (p.train.lr, p.train.weight_decay, p.train.batch_size, p.train.optimizer) == (0.001, 0.0001, 64, "adamw")
        assert (p.train.epochs, p.train.warmup_epochs, p.train.eval_every, p.train.decay_rule) == (100, 10, 10, "all")
        assert p.backbone.name == "vit_base_patch16_224.orig_in21k" and p.backbone.args["drop_path_rate"] == 0.1


@pytest.mark.parametrize("args, needles", [
    (["--suite", "fgvc", "--methods", "repadapter"],
     ["no settings for repadapter on task 'CUB' of suite 'fgvc'", "for suites vtab1k only"]),
    (["--suite", "vtab1k", "--methods", "repadapter:scale=1"],
     ["no settings for method 'repadapter:scale=1.0'", f"it has repadapter, {ATTN}"]),
])
def test_what_the_source_lacks_is_refused_in_one_line(tmp_path, args, needles):
    proc = petlbench_cli("run", "--protocol", "paper", "--source", "repadapter", "--data-root", str(tmp_path),
                         "--random-init", "--out", str(tmp_path / "out"), *args)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "out").exists()


def paper_record(task: str, label: str, top1: float) -> dict:
    """A successful `--protocol paper` record as the runner writes it (its `paper` key as sweep/paper.py makes)."""
    row, index = load_settings("repadapter").row("vtab1k", task, label), VTAB.index(task)
    return {"schema": SCHEMA, "run_id": f"{task}-{label}", "status": "success", "suite": "vtab1k", "task": task,
            "task_index": index, "task_group": load_suite("vtab1k").tasks[index].group, "seed": 0,
            "method": {"name": "repadapter", "label": label},
            "backbone": {"name": "vit_base_patch16_224.orig_in21k", "weights": "timm-pretrained"},
            "protocol": {"name": "paper", "source": "repadapter"},
            "data": {"root": "/data", "layout": "noah", "build": "noah-jpeg"},
            "metrics": {"test_top1": (top1 - 1) / 100, "test_curve": [[10, (top1 - 2) / 100], [50, top1 / 100]]},
            "params": {"trainable_excl_head": 239_808, "backbone": 85_798_656},
            "paper": {"source": "repadapter", "settings": {**row.settings(), "reported": row.reported()},
                      "label": f"{label} [repadapter]"}}


def test_table_shows_paper_runs_beside_repadapters_published_row(tmp_path):
    top = vpetl_row()
    ours = {t: top[t] + (0.5 if i % 2 else 3.0) for i, t in enumerate(VTAB)}  # best epoch: 9 of 19 within 1 point
    for t in VTAB:
        write_atomic(tmp_path / "vtab1k" / f"{t}-repadapter.json", paper_record(t, "repadapter", ours[t]))
        write_atomic(tmp_path / "vtab1k" / f"{t}-repattn.json", paper_record(t, ATTN, 60.0))
    text = render(tmp_path, "csv", report="max-test")
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).set_index("method")
    mine = [m for m in frame.index if m.startswith("repadapter [repadapter]")]
    attn = [m for m in frame.index if m.startswith(f"{ATTN} [repadapter]")]
    vpetl = [m for m in frame.index if m.startswith("published: repadapter [vpetl (test_best, ")]
    assert len(mine) == len(attn) == len(vpetl) == 1, list(frame.index)
    assert frame.loc[vpetl[0], "dtd"] == f"{top['dtd']:.1f}" and frame.loc[mine[0], "dtd"] == f"{ours['dtd']:.1f}"
    # the difference row is against the row the source reported, not PETL_Vision's equally close test_best row
    delta = "Δ repadapter [repadapter] [max test] vs vpetl"
    assert delta in frame.index and not [m for m in frame.index if m.startswith("Δ repadapter [") and m != delta]
    assert frame.loc[delta, "dtd"] == f"{ours['dtd'] - top['dtd']:+.1f}"
    md = render(tmp_path, "md", report="max-test")
    assert "repadapter [repadapter]: reproduced within 1 point on 9 of 19 tasks; max |Δ| 3.0" in md
    assert f"{ATTN} [repadapter]: reproduced" not in md  # repattn: no published number to compare with
    # V-PETL's RepAdapter row: orig_in21k weights and NOAH's JPEG build, as RepAdapter's train.py: no warning
    assert not [line for line in md.splitlines() if line.startswith("⚠ repadapter")], md
