"""Values that make no sense are refused where they are parsed: declared ranges of options, every float spelling,
duplicate YAML keys, suite keys that need a type, and names that must stay names (never paths)."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import pytest

from petlbench.commands import parse_grid
from petlbench.errors import UserError
from petlbench.options import Range, build, describe_fields, load_yaml, parse_pairs, parse_scalar
from petlbench.prompts import PromptConfig
from petlbench.registry import method_options_help, parse_method_spec
from petlbench.specs import Preprocessing, TrainConfig
from petlbench.suite import load_suite

TASKS = "tasks:\n  - {name: a, classes: 2, group: natural}\n"


def suite_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path, *needles: str) -> str:
    """load_suite refuses `path` with one line that starts with the file and names every needle."""
    with pytest.raises(UserError) as err:
        load_suite(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# --------------------------------------------------------------------------------------------------
# Range: declared on a dataclass field, checked by options.build, shown by describe_fields


@dataclass
class PluginConfig:  # as a third-party method would write it
    rank: Annotated[int, Range(min=1)] = 4
    alpha: Annotated[float, Range(gt=0, lt=1)] = 0.5
    cap: Annotated[Optional[float], Range(gt=0)] = None
    name: str = "x"


def test_range_on_a_plugin_config():
    cfg = build(PluginConfig, {"rank": 1, "alpha": 0.25, "cap": 3}, "method plug")
    assert (cfg.rank, cfg.alpha, cfg.cap) == (1, 0.25, 3.0) and type(cfg.cap) is float
    assert build(PluginConfig, {"cap": None}, "method plug").cap is None  # Optional: none stays allowed
    for key, value, needle in [("rank", 0, ">= 1"), ("alpha", 1, "in (0, 1)"), ("alpha", 0.0, "in (0, 1)"),
                               ("cap", -1.0, "> 0"), ("alpha", math.nan, "in (0, 1)")]:
        with pytest.raises(UserError) as err:
            build(PluginConfig, {key: value}, "method plug")
        msg = str(err.value)
        assert msg.startswith("method plug: option ") and f"'{key}'" in msg and needle in msg, msg
    shown = describe_fields(PluginConfig)
    assert "rank=4 (int >= 1)" in shown and "alpha=0.5 (float in (0, 1))" in shown and "cap=None (float > 0)" in shown


def test_range_rejects_contradictory_bounds():
    with pytest.raises(TypeError):
        Range(min=0, gt=0)


TRAIN_BAD = [("epochs", 0), ("epochs", -3), ("batch_size", 0), ("eval_batch_size", 0), ("warmup_epochs", -1),
             ("lr", 0), ("lr", -0.1), ("lr", math.inf), ("lr", math.nan), ("weight_decay", -1e-4),
             ("momentum", 1.0), ("momentum", -0.1), ("label_smoothing", 1.0), ("label_smoothing", -0.1),
             ("grad_clip", 0.0), ("grad_clip", -1.0), ("lr_scale_batch", 0), ("eval_every", -1)]


@pytest.mark.parametrize("key,value", TRAIN_BAD, ids=[f"{k}={v}" for k, v in TRAIN_BAD])
def test_train_values_that_make_no_sense(key, value):
    with pytest.raises(UserError) as err:
        build(TrainConfig, {key: value}, "--train")
    msg = str(err.value)
    assert msg.startswith(f"--train: option '{key}' expects ") and repr(value) in msg, msg


def test_train_boundaries_that_do_make_sense():
    cfg = build(TrainConfig, {"warmup_epochs": 0, "weight_decay": 0, "momentum": 0, "label_smoothing": 0,
                              "grad_clip": None, "lr_scale_batch": None, "epochs": 1, "batch_size": 1}, "--train")
    assert cfg.warmup_epochs == 0 and cfg.momentum == 0.0 and cfg.grad_clip is None
    assert build(TrainConfig, {"lr_scale_batch": 1, "grad_clip": 1}, "--train").grad_clip == 1.0


@pytest.mark.parametrize("spec,needle", [
    ("vpt_deep:tokens=0", "'tokens' expects int in [1, 1000]"),
    ("vpt_shallow:tokens=-2", "'tokens' expects int in [1, 1000]"),
    ("vpt_deep:dropout=1", "'dropout' expects float in [0, 1)"),
    ("vpt_shallow:dropout=1.5", "'dropout' expects float in [0, 1)"),  # its own default, the same range
    ("vpt_deep:dropout=-0.1", "'dropout'"),
    ("adapter:bottleneck=0", "'bottleneck' expects int >= 1"),
    ("adapter:scale=.nan", "'scale'"),
])
def test_method_options_that_make_no_sense(spec, needle):
    with pytest.raises(UserError) as err:
        parse_method_spec(spec)
    assert str(err.value).startswith(f"method {spec.split(':')[0]}: ") and needle in str(err.value)


def test_ls_methods_shows_the_ranges():
    assert "tokens=50 (int in [1, 1000])" in describe_fields(PromptConfig)
    assert "dropout=0.1 (float in [0, 1))" in describe_fields(PromptConfig)
    from petlbench.registry import get_method
    assert "bottleneck=8 (int >= 1)" in method_options_help(get_method("adapter"))
    assert "crop_pct=1.0 (float in (0, 1])" in describe_fields(Preprocessing)
    assert "lr=0.001 (float > 0)" in describe_fields(TrainConfig)


@pytest.mark.parametrize("text,needle", [
    ("train: {epochs: 0}", "'epochs' expects int >= 1"),
    ("train: {lr: -1e-3}", "'lr' expects float > 0"),
    ("method_options: {vpt_deep: {tokens: 0}}", "method_options.vpt_deep"),
    ("method_options: {adapter: {bottleneck: 0}}", "'bottleneck'"),
    ("preprocessing: {crop_pct: 0}", "'crop_pct' expects float in (0, 1]"),
    ("preprocessing: {crop_pct: 1.5}", "'crop_pct'"),
])
def test_suite_values_that_make_no_sense(tmp_path, text, needle):
    refused(suite_file(tmp_path, f"name: s\n{text}\n{TASKS}"), needle)


# --------------------------------------------------------------------------------------------------
# every float spelling, one safe loader


@pytest.mark.parametrize("text,value", [
    ("1e-3", 1e-3), ("1E-3", 1e-3), ("1.0e-3", 1e-3), ("1.0E+3", 1e3), ("1e3", 1e3), (".5", 0.5), ("5.", 5.0),
    ("-1e-3", -1e-3), ("+2.5", 2.5), ("0.1", 0.1), ("-.5", -0.5), ("1_000.5", 1000.5),
])
def test_parse_scalar_reads_every_float_spelling(text, value):
    got = parse_scalar(text)
    assert type(got) is float and got == value


def test_parse_scalar_keeps_other_types():
    assert parse_scalar("32") == 32 and type(parse_scalar("32")) is int
    assert parse_scalar("-4") == -4 and parse_scalar("true") is True and parse_scalar("none") is None
    assert parse_scalar("abc") == "abc" and parse_scalar("1e") == "1e" and parse_scalar(".") == "."
    assert parse_scalar("e3") == "e3" and parse_scalar("1.2.3") == "1.2.3"
    assert math.isinf(parse_scalar(".inf")) and math.isnan(parse_scalar(".nan"))


def test_command_line_floats_reach_the_config():
    cfg = build(TrainConfig, parse_pairs("lr=1e-3,weight_decay=5E-5,momentum=.9", ",", "--train"), "--train")
    assert (cfg.lr, cfg.weight_decay, cfg.momentum) == (1e-3, 5e-5, 0.9)
    assert parse_method_spec("vpt_deep:dropout=1e-1").config.dropout == 0.1
    with pytest.raises(UserError, match=r"'lr' expects float > 0, got -0.001"):
        build(TrainConfig, parse_pairs("lr=-1e-3", ",", "--train"), "--train")
    with pytest.raises(UserError, match=r"'lr' expects float > 0, got inf"):
        build(TrainConfig, parse_pairs("lr=.inf", ",", "--train"), "--train")


def test_grid_and_suite_read_exponent_floats(tmp_path):
    grid = parse_grid("{lr: [1e-4, 5E-4, .1], weight_decay: [0, 1.0e-3]}")
    assert grid == {"lr": [1e-4, 5e-4, 0.1], "weight_decay": [0, 1e-3]}
    assert all(type(v) is float for v in grid["lr"])
    suite = load_suite(str(suite_file(tmp_path, f"name: s\ntrain: {{lr: 1e-3, weight_decay: 1E-4}}\n{TASKS}")))
    assert suite.train == {"lr": 1e-3, "weight_decay": 1e-4} and type(suite.train["lr"]) is float


def test_duplicate_keys_are_refused_with_file_key_and_lines(tmp_path):
    path = suite_file(tmp_path, f"name: s\ntrain: {{epochs: 5}}\n{TASKS}train: {{epochs: 50}}\n")
    refused(path, "'train'", "line 2", "line 5")
    nested = suite_file(tmp_path, f"name: s\ntrain: {{lr: 0.1, lr: 0.01}}\n{TASKS}")
    refused(nested, "'lr'", "line 2")
    with pytest.raises(UserError) as err:
        parse_grid("{lr: [0.1], lr: [0.01]}")
    assert str(err.value).startswith("--grid: ") and "'lr'" in str(err.value)


def test_loader_stays_safe_and_merges_still_work():
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml("a: !!python/object/apply:os.system ['true']\n", "x.yaml")
    merged = load_yaml("base: &b {lr: 0.1, epochs: 2}\nmine:\n  <<: *b\n  lr: 1e-2\n", "x.yaml")
    assert merged["mine"] == {"lr": 0.01, "epochs": 2}


# --------------------------------------------------------------------------------------------------
# suite keys that need a type


BACKBONE = "backbone:\n  name: vit_tiny_patch16_224\n"
SUITE_BAD = {
    "args not a mapping": (BACKBONE + "  args: 5\n", ["'backbone.args'", "mapping"]),
    "mean a number": (BACKBONE + "  mean: 5\n", ["'backbone.mean'", "three numbers"]),
    "mean two numbers": (BACKBONE + "  mean: [0.5, 0.5]\n", ["'backbone.mean'", "three numbers"]),
    "mean strings": (BACKBONE + "  mean: [a, b, c]\n", ["'backbone.mean'", "three numbers"]),
    "std zero": (BACKBONE + "  std: [0.2, 0, 0.2]\n", ["'backbone.std'", "positive"]),
    "checkpoint a number": (BACKBONE + "  checkpoint: 5\n", ["'backbone.checkpoint'", "path"]),
    "pretrained a string": (BACKBONE + "  pretrained: \"no\"\n", ["'backbone.pretrained'", "true or false", "'no'"]),
    "name not a string": ("backbone: {name: 5}\n", ["'backbone.name'", "timm model name"]),
    "interpolation unknown": (BACKBONE + "  interpolation: cubic\n",
                              ["'backbone.interpolation'", "bicubic", "bilinear", "'cubic'"]),
    "group a list": ("tasks:\n  - {name: a, classes: 2, group: [1, 2]}\n", ["'tasks[0].group'", "string"]),
    "data_root a number": ("data_root: 5\n", ["'data_root'", "string"]),
    "groups not strings": ("groups: [1]\n", ["'groups'", "group names"]),
}


@pytest.mark.parametrize("case", sorted(SUITE_BAD))
def test_suite_keys_need_their_types(tmp_path, case):
    text, needles = SUITE_BAD[case]
    refused(suite_file(tmp_path, "name: s\n" + text + ("" if "tasks:" in text else TASKS)), *needles)


def test_suite_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(("name: caf\u00e9\n" + TASKS).encode("latin-1"))
    refused(path, "UTF-8")


def test_good_backbone_keys_still_load(tmp_path):
    text = BACKBONE + ("  args: {depth: 2}\n  pretrained: false\n  mean: [0.5, 0.5, 0.5]\n  std: [0.5, 0.5, 0.5]\n"
                       "  interpolation: bilinear\n  checkpoint: weights.safetensors\n")
    suite = load_suite(str(suite_file(tmp_path, "name: s\n" + text + TASKS)))
    assert suite.backbone["pretrained"] is False and suite.backbone["interpolation"] == "bilinear"


# --------------------------------------------------------------------------------------------------
# names are names, never paths


NAME_BAD = {
    "suite name up": ("name: ../../X\n" + TASKS, "'name'"),
    "suite name absolute": ("name: /tmp/X\n" + TASKS, "'name'"),
    "task name up": ("name: s\ntasks:\n  - {name: ../../X, classes: 2}\n", "'tasks[0].name'"),
    "task name absolute": ("name: s\ntasks:\n  - {name: /etc, classes: 2}\n", "'tasks[0].name'"),
    "task name slash": ("name: s\ntasks:\n  - {name: a/b, classes: 2}\n", "'tasks[0].name'"),
    "task name backslash": ("name: s\ntasks:\n  - {name: 'a\\b', classes: 2}\n", "'tasks[0].name'"),
    "task name hidden": ("name: s\ntasks:\n  - {name: .a, classes: 2}\n", "'tasks[0].name'"),
    "task alias up": ("name: s\ntasks:\n  - {name: a, classes: 2, aliases: [ok, ..]}\n", "'tasks[0].aliases'"),
    "suite alias": ("name: s\naliases: [x/y]\n" + TASKS, "'aliases'"),
    "split up": ("name: s\nsplits: {test: [../../secret]}\n" + TASKS, "'splits.test'"),
    "split absolute": ("name: s\nsplits: {train: /etc/passwd}\n" + TASKS, "'splits.train'"),
}


@pytest.mark.parametrize("case", sorted(NAME_BAD))
def test_names_never_paths(tmp_path, case):
    text, key = NAME_BAD[case]
    refused(suite_file(tmp_path, text), key, "plain name")


def test_plain_names_with_dots_dashes_and_plus_load(tmp_path):
    text = ("name: my-suite.v2+x\naliases: [mine_2]\nsplits: {train: [train-800.a]}\n"
            "tasks:\n  - {name: cifar-100, classes: 2, aliases: [c.100, c+100]}\n")
    suite = load_suite(str(suite_file(tmp_path, text)))
    assert suite.name == "my-suite.v2+x" and suite.aliases == ["mine_2"] and suite.splits["train"] == ["train-800.a"]
    assert suite.tasks[0].aliases == ["c.100", "c+100"]
