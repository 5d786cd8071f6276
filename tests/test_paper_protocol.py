"""`--protocol paper --source`: the source's per-task settings, run as final runs, recorded, refused where missing,
and compared with the source's own numbers; the shipped settings equal the reference data they come from."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error, petlbench_cli
from petlbench.settings import load_settings, packaged_sources
from petlbench.errors import UserError
from petlbench.sweep.runner import make_sweep
from petlbench.tools.paper_settings import SOURCES, dump, petl_vision, reference_rows

REFERENCE = Path(__file__).parent / "data" / "paper_settings"  # copies of the shared reference files

SETTINGS = """\
source: demo_paper
title: a paper made up for the demo
origin: {repository: none, commit: none, file: tests/test_paper_protocol.py}
recipe:
  train: {optimizer: adamw, epochs: 1, warmup_epochs: 0, batch_size: 64, eval_batch_size: 500}
  backbone_args: {drop_path_rate: 0.0}
  mean: [0.0, 0.0, 0.0]
  std: [1.0, 1.0, 1.0]
rows:
  - {suite: demo, task: shapes, method: lora, options: {rank: 2, alpha: 2}, train: {lr: 0.002}, top1: 50.0}
  - {suite: demo, task: count, method: lora, options: {rank: 4}, train: {lr: 0.004, weight_decay: 0.0}, top1: 40.0}
  - {suite: demo, task: shapes, method: vpt_deep, options: {tokens: 2}, train: {lr: 0.01}, top1: 60.0}
  - {suite: demo, task: count, method: vpt_deep, options: {tokens: 3}, train: {lr: 0.02},
     backbone_args: {drop_path_rate: 0.05}, top1: 30.0}
  - {suite: demo, task: count, method: not_a_method, options: {bottleneck: 8}, top1: 30.0}
"""
EXPECTED = {  # (task, method): (options, lr, weight decay, drop path)
    ("shapes", "lora"): ({"rank": 2, "alpha": 2.0}, 0.002, 1e-4, 0.0),
    ("count", "lora"): ({"rank": 4, "alpha": 8.0}, 0.004, 0.0, 0.0),
    ("shapes", "vpt_deep"): ({"tokens": 2}, 0.01, 1e-4, 0.0),
    ("count", "vpt_deep"): ({"tokens": 3}, 0.02, 1e-4, 0.05),
}


def demo_args(root: Path, settings: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--suite", "demo", "--data-root", str(root), "--protocol", "paper", "--source", str(settings),
            "--tasks", "shapes,count", "--out", str(out), "--quiet", *extra]


@pytest.fixture
def settings_file(tmp_path) -> Path:
    path = tmp_path / "demo_paper.yaml"
    path.write_text(SETTINGS)
    return path


def test_paper_runs_use_the_source_settings_and_report_reproduction(demo_root, settings_file, tmp_path):
    out = tmp_path / "results"
    proc = petlbench_cli(*demo_args(demo_root, settings_file, out, "--methods", "lora,vpt_deep"))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in sorted(out.glob("demo/*/*.json"))]
    assert len(records) == 4
    for r in records:
        options, lr, wd, drop_path = EXPECTED[(r["task"], r["method"]["name"])]
        assert r["protocol"]["name"] == "paper" and r["protocol"]["source"] == "demo_paper"
        assert r["protocol"]["train_splits"] == ["train800val200"] and r["protocol"]["eval_splits"] == ["test"]
        assert {k: r["method"]["options"][k] for k in options} == options
        assert (r["train"]["lr"], r["train"]["weight_decay"], r["train"]["epochs"]) == (lr, wd, 1)
        assert r["backbone"]["args"]["drop_path_rate"] == drop_path
        assert r["data"]["preprocessing"]["mean"] == [0.0, 0.0, 0.0]  # the source's, not the demo suite's 0.5
        paper = r["paper"]
        assert paper["source"] == "demo_paper" and paper["file"] == str(settings_file.resolve())
        assert paper["settings"]["method"] == r["method"]["name"]
        assert paper["settings"]["train"]["lr"] == lr
        assert len(paper["sha256"]) == 64
    # the table: one row per method and source, and the reproduction against the file's numbers
    table = petlbench_cli("table", str(out))
    assert table.returncode == 0, table.stderr
    assert "| lora [demo_paper]" in table.stdout and "| vpt_deep [demo_paper]" in table.stdout
    ours = {(r["task"], r["method"]["name"]): 100 * r["metrics"]["test_top1"] for r in records}
    worst = max(abs(ours[("shapes", "lora")] - 50.0), abs(ours[("count", "lora")] - 40.0))
    within = sum(abs(ours[k] - v) <= 1.0 for k, v in ((("shapes", "lora"), 50.0), (("count", "lora"), 40.0)))
    assert (f"lora [demo_paper]: reproduced within 1 point on {within} of 2 tasks; max |Δ| {worst:.1f}"
            in table.stdout)
    # status knows the protocol: every run of the command is done
    status = petlbench_cli("status", str(out), "--suite", "demo", "--data-root", str(demo_root), "--methods",
                           "lora,vpt_deep", "--protocol", "paper", "--source", str(settings_file), "--tasks",
                           "shapes,count", "--format", "json")
    rows = json.loads(status.stdout)["rows"]
    assert len(rows) == 4 and all(r["done"] == 1 and r["stage"] == "paper" for r in rows)


def test_the_settings_are_part_of_the_identity(demo_root, settings_file, tmp_path):
    from petlbench.sweep.runner import make_sweep
    changed = tmp_path / "changed.yaml"
    changed.write_text(SETTINGS.replace("train: {lr: 0.002}", "train: {lr: 0.003}"))
    ids = []
    for source in (settings_file, changed):
        sweep = make_sweep("demo", "lora", [0], tasks=["shapes", "count"], data_root=str(demo_root),
                           protocol="paper", source=str(source), log=lambda line: None)
        ids.append([sweep.plan(task, sweep.methods[0], 0).config_id() for task in sweep.tasks])
    assert ids[0][0] != ids[1][0]  # shapes' lr changed
    assert ids[0][1] == ids[1][1]  # count's did not


@pytest.mark.parametrize("args, needles", [
    (["--methods", "ssf"], ["no settings for method 'ssf'", "it has", "lora", "vpt_deep"]),
    (["--methods", "lora", "--tasks", "position"], ["no settings for lora on task 'position'", "shapes, count"]),
    (["--methods", "not_a_method"], ["'not_a_method'", "petlbench has no method"]),
    (["--methods", "lora", "--grid", "{lr: [0.1]}"], ["--grid", "--protocol paper"]),
])
def test_missing_settings_are_refused_in_one_line(demo_root, settings_file, tmp_path, args, needles):
    base = demo_args(demo_root, settings_file, tmp_path / "out")
    base = base[:base.index("--tasks")] + base[base.index("--tasks") + 2:]
    proc = petlbench_cli(*base, *(args if "--tasks" in args else [*args, "--tasks", "shapes,count"]))
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "out").exists()


def test_unknown_or_absent_source_is_refused(tmp_path):
    proc = petlbench_cli("run", "--methods", "lora", "--protocol", "paper", "--source", "nope")
    assert_one_line_error(proc, "unknown source 'nope'", "petl_vision")
    assert_one_line_error(petlbench_cli("run", "--methods", "lora", "--protocol", "paper"), "--source", "petl_vision")
    assert_one_line_error(petlbench_cli("run", "--methods", "lora", "--source", "petl_vision"), "--protocol paper")


@pytest.mark.parametrize("edit, needles", [
    (("options: {rank: 4}", "options: {rank: 0}"), ["row 2", "'rank'"]),
    (("options: {rank: 4}", "options: {rnak: 4}"), ["row 2", "'rnak'"]),
    (("train: {lr: 0.01}", "train: {lr: -1}"), ["row 3", "'lr'"]),
    (("top1: 60.0", "top1: 600"), ["row 3", "'top1'"]),
    (("task: count, method: lora", "task: count, method: lora, colour: red"), ["row 2", "'colour'"]),
    (("task: count, method: vpt_deep", "task: shapes, method: vpt_deep"), ["row 4", "also row 3"]),
])
def test_a_users_settings_file_is_checked_with_file_row_and_key(settings_file, edit, needles):
    settings_file.write_text(SETTINGS.replace(*edit))
    proc = petlbench_cli("run", "--methods", "lora", "--protocol", "paper", "--source", str(settings_file))
    assert_one_line_error(proc, str(settings_file), *needles)


def test_shipped_petl_vision_settings_equal_the_reference():
    assert "petl_vision" in packaged_sources()
    shipped = packaged_sources()["petl_vision"]
    assert shipped.read_text() == dump(petl_vision(REFERENCE))  # regenerated, byte for byte
    settings = load_settings("petl_vision")
    reference = [r for r in reference_rows(REFERENCE / "petl_vision_best_tune.csv")
                 if r["experiment"] == "default_vtab" and r["task"] != "cifar_aug_norm"]
    assert len(settings.rows) == len(reference) == 16 * 19
    labels = {"fact_tk": "fact", "fact_tt": "fact:variant=tt", "lora_p_adapter": "adapter:init=zeros",
              "rand_h_adapter": "adapter:placement=both"}
    for ref in reference:
        row = settings.row("vtab1k", ref["task"], labels.get(ref["source_method"], ref["source_method"]))
        assert row.train == {"lr": float(ref["lr"]), "weight_decay": float(ref["wd"])}
        assert row.top1 == float(ref["final_test_top1"]) and row.best_top1 == float(ref["best_epoch_test_top1"])
        for option, column in (("bottleneck", "adapter_bottleneck"), ("rank", "lora_bottleneck"),
                               ("rank", "fact_dim"), ("tokens", "vpt_num"), ("dim", "convpass_bottleneck")):
            if ref[column]:
                assert row.options[option] == int(ref[column])
        for option, column in (("scale", "adapter_scaler"), ("scale", "fact_scaler"), ("scale", "convpass_scaler")):
            if ref[column]:
                assert row.options[option] == float(ref[column])
    lora = settings.row("vtab1k", "cifar", "lora")
    assert lora.options["alpha"] == lora.options["rank"]  # PETL_Vision adds B A unscaled
    for label in ("adapter:init=zeros", "adapter:placement=both"):  # model/adapter.py, block.py sequential_after
        row = settings.row("vtab1k", "cifar", label)
        assert row.options["act"] == "relu" and row.options["drop_path_order"] == "twice"
    assert settings.recipe["mean"] == [0.0, 0.0, 0.0] and settings.recipe["backbone"].endswith("orig_in21k")
    raw = yaml.safe_load(shipped.read_text())
    assert raw["origin"]["commit"] == "245d262"


PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
SSF_TASKS = {"cifar_100": "cifar", "flowers102": "oxford_flowers102", "pets": "oxford_iiit_pet", "cub_2011": "CUB",
             "oxford_flowers": "OxfordFlowers", "stanford_cars": "StanfordCars", "stanford_dogs": "StanfordDogs"}
FGVC_COLUMNS = {"cub": "CUB", "oxford_flowers": "OxfordFlowers", "stanford_dogs": "StanfordDogs",
                "stanford_cars": "StanfordCars"}


def published_row(suite: str, source_key: str, method: str) -> dict[str, float]:
    """The task columns of one row of results/published (read here independently of the converter)."""
    with (PUBLISHED / f"published_{suite}.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["source_key"] == source_key and r["method"] == method]
    assert len(rows) == 1 and rows[0]["selection"] == "test_best"
    skip = {"method", "backbone", "trainable_params_M", "source_key", "source", "selection", "seeds", "data_build",
            "copy_of", "inputs", "notes"}
    return {FGVC_COLUMNS.get(k, k): float(v) for k, v in rows[0].items() if k not in skip and v}


@pytest.mark.parametrize("source", ["ssf", "fact", "convpass"])
def test_shipped_settings_are_regenerated_byte_for_byte(source):
    assert packaged_sources()[source].read_text() == dump(SOURCES[source](REFERENCE))


def test_shipped_ssf_settings_equal_its_train_scripts():
    settings = load_settings("ssf")
    scripts = reference_rows(REFERENCE / "ssf_train_scripts.csv")
    assert len(settings.rows) == len(scripts) == 19 + 5
    tops = {"vtab1k": published_row("vtab1k", "ssf", "ssf"), "fgvc": published_row("fgvc", "ssf", "ssf")}
    for s in scripts:
        suite = "vtab1k" if s["benchmark"] == "vtab" else "fgvc"
        row = settings.row(suite, SSF_TASKS.get(s["task"], s["task"]), "ssf")
        assert (row.train["lr"], row.train["weight_decay"]) == (float(s["lr"]), float(s["weight-decay"]))
        assert row.backbone_args == {"drop_path_rate": float(s["drop-path"])}
        assert row.train.get("label_smoothing", 0.0) == (0.1 if suite == "fgvc" else 0.0)  # timm's default there
        assert row.top1 is None and row.best_top1 == tops[suite][row.task]  # SSF keeps its best test epoch
    assert settings.recipe["train"]["batch_size"] == 2 * 32  # two GPUs x 32
    assert settings.recipe["backbone"] == "vit_base_patch16_224.augreg_in21k"
    assert settings.recipe["mean"] == settings.recipe["std"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("source, csv_name, labels, source_key, published_labels", [
    ("fact", "fact_configs.csv", {"tk": "fact", "tt": "fact:variant=tt"}, "fact", {}),
    ("convpass", "convpass_configs.csv", {"convpass": "convpass", "convpass_attn": "convpass_attn"},
     "convpass_readme", {"convpass_attn": "convpass:placement=attn"}),
])
def test_shipped_jie_settings_equal_their_configs(source, csv_name, labels, source_key, published_labels):
    settings = load_settings(source)
    configs = reference_rows(REFERENCE / csv_name)
    assert len(settings.rows) == len(configs) == 2 * 19
    tops = {label: published_row("vtab1k", source_key, published_labels.get(label, label))
            for label in labels.values()}
    for c in configs:
        label = labels[c["variant"]]
        row = settings.row("vtab1k", c["task"], label)
        assert row.options["scale"] == float(c["scale"])
        if source == "fact":
            assert row.options["rank"] == int(c["rank"])
        else:
            assert row.options["conv_init"] == ("xavier" if c["xavier_init"] == "True" else "identity")
            assert row.options["dim"] == 8
        assert row.top1 is None and row.best_top1 == tops[label][c["task"]]
    recipe = settings.recipe
    assert recipe["backbone"].endswith("orig_in21k") and recipe["mean"] == [0.485, 0.456, 0.406]
    assert {k: recipe["train"][k] for k in ("lr", "weight_decay", "epochs", "batch_size", "eval_every")} == \
        {"lr": 1e-3, "weight_decay": 1e-4, "epochs": 100, "batch_size": 64, "eval_every": 10}


@pytest.mark.parametrize("source, suite, methods, runs", [
    ("ssf", "vtab1k", "ssf", 19), ("ssf", "fgvc", "ssf", 5), ("fact", "vtab1k", "fact,fact:variant=tt", 38),
    ("convpass", "vtab1k", "convpass", 19), ("petl_vision", "vtab1k", "ln,lora", 38),
    ("petl_vision", "vtab1k", "adapter:init=zeros,adapter:placement=both", 38),
])
def test_every_run_of_a_shipped_source_plans_without_data(tmp_path, source, suite, methods, runs):
    """On an empty data root: every task of the suite has its row, its options fit the method, nothing refused."""
    sweep = make_sweep(suite, methods, [0], data_root=str(tmp_path), out=str(tmp_path / "out"), protocol="paper",
                       source=source, random_init=True, log=lambda line: None)
    settings = load_settings(source)
    plans = [(sweep.paper.keys[id(method)], sweep.plan(task, method, 0)) for task in sweep.tasks
             for method in sweep.methods]
    assert len(plans) == runs
    for label, p in plans:
        row = settings.row(suite, p.task.name, label)
        assert p.backbone.name == settings.recipe["backbone"]
        assert p.train.lr == row.train.get("lr", settings.recipe["train"].get("lr"))
        assert p.backbone.args["drop_path_rate"] == {**settings.recipe["backbone_args"],
                                                     **row.backbone_args}["drop_path_rate"]
        assert all(getattr(p.method.config, k) == v for k, v in row.options.items())
        # the weight decay reaches what the source's optimizer decays: every tensor (AdamW over all trainable
        # parameters: PETL_Vision, FacT, Convpass) or timm's filter (SSF's factory), whatever the method declares
        assert p.train.decay_rule == settings.recipe["train"]["decay_rule"] == ("timm" if source == "ssf" else "all")


def test_convpass_attn_is_kept_and_refused(tmp_path):
    with pytest.raises(UserError, match="petlbench has no method 'convpass_attn'"):
        make_sweep("vtab1k", "convpass_attn", [0], data_root=str(tmp_path), protocol="paper", source="convpass",
                   random_init=True, log=lambda line: None)
