"""Suites: the packaged demo, users' own YAML files, and validation errors that name file and key."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from petlbench.errors import UserError
from petlbench.specs import LAYOUT_SPLITS
from petlbench.suite import Suite, load_suite, packaged_suites
from tests.conftest import assert_one_line_error, petlbench_cli

GOOD = """\
name: mine
description: my own tasks
layout: noah
backbone:
  name: vit_tiny_patch16_224
  args: {img_size: 32, patch_size: 8, embed_dim: 48, depth: 2, num_heads: 3}
  pretrained: false
train: {epochs: 2, lr: 0.01, batch_size: 8}
method_options:
  vpt_deep: {tokens: 2}
tasks:
  - {name: alpha, classes: 3, group: natural}
  - {name: beta, classes: 2}
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------------------------------
# the packaged demo suite


def test_demo_suite_loads():
    assert "demo" in packaged_suites()
    suite = load_suite("demo")
    assert isinstance(suite, Suite)
    assert suite.name == "demo"
    assert Path(suite.path).name == "demo.yaml" and Path(suite.path).is_file()
    assert suite.layout == "noah" and suite.prepare == "demo"
    assert [(t.name, t.classes, t.group) for t in suite.tasks] == [
        ("shapes", 6, "natural"), ("count", 6, "structured"), ("position", 9, "structured")]
    assert suite.backbone["name"] == "vit_tiny_patch16_224"
    assert suite.backbone["args"]["embed_dim"] == 96
    final = suite.protocol("final")
    assert final["train_splits"] == ["train800val200"] and final["eval_splits"] == ["test"]
    assert final["metric"] == "top1"
    search = suite.protocol("tune", "search")
    assert search["train_splits"] == ["train800"] and search["eval_splits"] == ["val200"]
    assert suite.groups == ["natural", "structured"]
    assert suite.method_options["vpt_deep"] == {"tokens": 4}
    assert suite.train["epochs"] > 0


def test_ls_suites_lists_demo():
    proc = petlbench_cli("ls", "suites")
    assert proc.returncode == 0, proc.stderr
    assert "demo: 3 tasks (shapes, count, position)" in proc.stdout.splitlines()


def test_unknown_packaged_suite():
    with pytest.raises(UserError) as err:
        load_suite("nosuch")
    msg = str(err.value)
    assert "'nosuch'" in msg and "demo" in msg
    assert "vtab1k (also vtab, vtab-1k)" in msg, "the aliases are offered too"


@pytest.mark.parametrize("alias", ["vtab", "vtab-1k", "vtab1k"])
def test_packaged_suite_by_alias(alias):
    suite = load_suite(alias)
    assert suite.name == "vtab1k", "records go under the suite's own name, whatever alias was typed"
    assert Path(suite.path).name == "vtab1k.yaml" and suite.aliases == ["vtab", "vtab-1k"]


def test_packaged_aliases_are_unique():
    suites = packaged_suites()
    names = [n for name in suites for n in (name, *load_suite(name).aliases)]
    assert len(names) == len(set(names)), names


def test_ls_suites_shows_aliases(capsys):
    from petlbench.cli import main
    assert main(["ls", "suites"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("vtab1k (aliases: vtab, vtab-1k): 19 tasks (cifar, ") for line in lines), lines


# --------------------------------------------------------------------------------------------------
# users' own suite files


def test_own_suite_file_loads_by_path(tmp_path):
    path = write(tmp_path, GOOD)
    suite = load_suite(str(path))
    assert suite.name == "mine" and suite.path == str(path)
    assert suite.description == "my own tasks"
    assert [(t.name, t.classes, t.group) for t in suite.tasks] == [("alpha", 3, "natural"), ("beta", 2, "")]
    assert suite.train == {"epochs": 2, "lr": 0.01, "batch_size": 8}
    assert suite.method_options == {"vpt_deep": {"tokens": 2}}
    assert suite.splits == LAYOUT_SPLITS["noah"]
    assert suite.prepare is None and suite.data_root is None
    assert [t.name for t in suite.select(["beta"])] == ["beta"]
    assert suite.select(None) == suite.tasks


def test_minimal_suite_gets_defaults(tmp_path):
    path = write(tmp_path, "name: tiny\ntasks: [{name: a, classes: 1}]\n", "tiny.yml")
    suite = load_suite(str(path))
    assert suite.layout == "noah" and suite.train == {} and suite.backbone == {} and suite.method_options == {}
    assert suite.splits == LAYOUT_SPLITS["noah"] and suite.recipe is None and suite.preprocessing.crop_pct == 1.0


def test_own_suite_relative_path_and_other_suffix(tmp_path, monkeypatch):
    write(tmp_path, GOOD, "mysuite.conf")
    monkeypatch.chdir(tmp_path)
    assert load_suite("mysuite.conf").name == "mine"  # an existing file is a path, whatever its suffix


def test_missing_suite_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as err:
        load_suite(str(missing))
    assert str(missing) in str(err.value) and "not found" in str(err.value)


# --------------------------------------------------------------------------------------------------
# validation errors name the file and the key

TASKS = "tasks:\n  - {name: a, classes: 2}\n  - {name: b, classes: 3}\n"

BAD = {
    "unknown top-level key": ("name: x\nbogus: 1\n" + TASKS, ["unknown key 'bogus'", "valid:", "tasks"]),
    "missing tasks": ("name: x\n", ["'tasks'", "required"]),
    "empty tasks": ("name: x\ntasks: []\n", ["'tasks'", "at least one"]),
    "tasks not a list": ("name: x\ntasks: {a: 2}\n", ["'tasks'", "list"]),
    "missing name": (TASKS, ["'name'", "required"]),
    "classes zero": ("name: x\ntasks:\n  - {name: a, classes: 2}\n  - {name: b, classes: 0}\n",
                     ["tasks[1].classes", "positive integer", "0"]),
    "classes string": ("name: x\ntasks:\n  - {name: a, classes: 2}\n  - {name: b, classes: six}\n",
                       ["tasks[1].classes", "positive integer", "'six'"]),
    "classes float": ("name: x\ntasks:\n  - {name: a, classes: 2}\n  - {name: b, classes: 2.5}\n",
                      ["tasks[1].classes", "positive integer"]),
    "classes bool": ("name: x\ntasks:\n  - {name: a, classes: 2}\n  - {name: b, classes: true}\n",
                     ["tasks[1].classes", "positive integer"]),
    "classes missing": ("name: x\ntasks:\n  - {name: a, classes: 2}\n  - {name: b}\n",
                        ["tasks[1].classes", "positive integer"]),
    "task unknown key": ("name: x\ntasks:\n  - {name: a, clases: 2}\n", ["tasks[0].clases"]),
    "task not a mapping": ("name: x\ntasks:\n  - a\n", ["tasks[0]", "mapping"]),
    "task without name": ("name: x\ntasks:\n  - {classes: 2}\n", ["tasks[0].name"]),
    "duplicate task": ("name: x\ntasks:\n  - {name: a, classes: 2}\n  - {name: a, classes: 3}\n",
                       ["'tasks'", "'a'", "twice"]),
    "unknown layout": ("name: x\nlayout: vtab\n" + TASKS, ["'layout'", "noah", "'vtab'"]),
    "unknown prepare": ("name: x\nprepare: download\n" + TASKS, ["'prepare'", "demo", "'download'"]),
    "backbone unknown key": ("name: x\nbackbone: {nam: vit}\n" + TASKS, ["backbone.nam", "valid:"]),
    "backbone not a mapping": ("name: x\nbackbone: vit\n" + TASKS, ["'backbone'", "mapping"]),
    "bad train key": ("name: x\ntrain: {lrr: 1}\n" + TASKS, ["'train'", "unknown option 'lrr'", "lr=", "epochs="]),
    "bad train type": ("name: x\ntrain: {epochs: many}\n" + TASKS, ["'train'", "'epochs'", "int", "'many'"]),
    "bad train choice": ("name: x\ntrain: {optimizer: lamb}\n" + TASKS, ["'train'", "'optimizer'", "adamw|sgd|adam"]),
    "method_options not a mapping": ("name: x\nmethod_options: {vpt_deep: 4}\n" + TASKS,
                                     ["method_options.vpt_deep", "mapping"]),
    "top level a list": ("- name: x\n- tasks: []\n", ["mapping at the top level"]),
    "top level a scalar": ("just a string\n", ["mapping at the top level"]),
    "empty file": ("", ["mapping at the top level"]),
    "invalid yaml": ("name: x\ntasks: [ {name: a, classes: 2}\n", ["not valid YAML"]),
    "tab indentation": ("name: x\ntasks:\n\t- {name: a, classes: 2}\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_error_names_file_and_key(tmp_path, case):
    text, needles = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_suite(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_select_unknown_task(tmp_path):
    suite = load_suite(str(write(tmp_path, GOOD)))
    with pytest.raises(UserError) as err:
        suite.select(["alpha", "gamma"])
    msg = str(err.value)
    assert "--tasks" in msg and "'gamma'" in msg and "'mine'" in msg and "alpha" in msg and "beta" in msg


# --------------------------------------------------------------------------------------------------
# through the CLI: exit 2, one line naming the file and the key, no traceback


def test_cli_run_with_bad_suite(tmp_path):
    path = write(tmp_path, "name: x\ntasks:\n  - {name: a, classes: 2}\n  - {name: b, classes: 0}\n")
    data = tmp_path / "data"
    data.mkdir()
    proc = petlbench_cli("run", "--suite", str(path), "--methods", "linear", "--data-root", str(data),
                         "--out", str(tmp_path / "results"))
    assert_one_line_error(proc, str(path), "tasks[1].classes")
    assert proc.stdout == ""
    assert not (tmp_path / "results").exists()


def test_cli_run_with_bad_train_and_unknown_task(tmp_path):
    bad = write(tmp_path, "name: x\ntrain: {epochs: many}\n" + TASKS, "bad.yaml")
    data = tmp_path / "data"
    data.mkdir()
    proc = petlbench_cli("run", "--suite", str(bad), "--methods", "linear", "--data-root", str(data),
                         "--out", str(tmp_path / "results"))
    assert_one_line_error(proc, str(bad), "'train'", "'epochs'")

    good = write(tmp_path, GOOD, "good.yaml")
    proc = petlbench_cli("run", "--suite", str(good), "--methods", "linear", "--tasks", "gamma",
                         "--data-root", str(data), "--out", str(tmp_path / "results"))
    assert_one_line_error(proc, "--tasks", "'gamma'", "alpha, beta")
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------------------------------
# the real benchmarks


def test_vtab1k_suite_has_the_19_tasks_in_three_groups():
    suite = load_suite("vtab1k")
    assert suite.layout == "noah" and len(suite.tasks) == 19
    assert suite.groups == ["natural", "specialized", "structured"]
    sizes = {g: sum(t.group == g for t in suite.tasks) for g in suite.groups}
    assert sizes == {"natural": 7, "specialized": 4, "structured": 8}
    classes = {t.name: t.classes for t in suite.tasks}
    assert classes["cifar"] == 100 and classes["sun397"] == 397 and classes["patch_camelyon"] == 2
    assert classes["smallnorb_azi"] == 18 and classes["dsprites_ori"] == 16
    assert [t.name for t in suite.select(["cifar100", "oxford_pet"])] == ["cifar", "oxford_iiit_pet"]


def test_fgvc_suite_layout_splits_and_preprocessing():
    suite = load_suite("fgvc")
    assert suite.layout == "fgvc" and [t.name for t in suite.tasks] == [
        "CUB", "nabirds", "OxfordFlowers", "StanfordDogs", "StanfordCars"]
    assert {t.name: t.images for t in suite.tasks} == {
        "CUB": "images", "nabirds": "images", "OxfordFlowers": "", "StanfordDogs": "Images", "StanfordCars": ""}
    assert suite.protocol("final")["train_splits"] == ["train", "val"]
    assert suite.preprocessing.crop_pct == 0.875 and suite.preprocessing.train == "random_crop_flip"
    assert suite.select(["CUB_200_2011"])[0].name == "CUB"


@pytest.mark.parametrize("text,needle", [
    ("splits: {bogus: [x]}", "'splits.bogus'"),
    ("splits: {train: 3}", "'splits.train'"),
    ("groups: [other]", "'groups' lacks the group 'natural'"),
    ("recipe: fancy", "'recipe' must be one of vpt, noah"),
    ("preprocessing: {crop_pct: big}", "'preprocessing'"),
    ("preprocessing: {train: mixup}", "'preprocessing'"),
])
def test_issue3_keys_are_validated(tmp_path, text, needle):
    path = write(tmp_path, f"name: s\n{text}\ntasks: [{{name: a, classes: 2, group: natural}}]\n")
    with pytest.raises(UserError) as err:
        load_suite(str(path))
    assert str(err.value).startswith(str(path)) and needle in str(err.value)


def test_task_images_must_stay_inside(tmp_path):
    path = write(tmp_path, "name: s\nlayout: fgvc\ntasks: [{name: a, classes: 2, images: ../elsewhere}]\n")
    with pytest.raises(UserError, match=r"tasks\[0\].images"):
        load_suite(str(path))
