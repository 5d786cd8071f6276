"""Method registry: built-ins, run-time registration, entry-point plugins, option parsing, CLI errors."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pytest
from torch import nn

from petlbench.errors import UserError
from petlbench.method import Method, unfreeze
from petlbench.options import Range
from petlbench.params import build_model
from petlbench.registry import (
    BUILTIN,
    available_methods,
    get_method,
    parse_method_list,
    parse_method_spec,
    register_method,
    unregister_method,
)
from tests.conftest import TINY_ARGS, TINY_BACKBONE_ARGS, assert_one_line_error, petlbench_cli

EMBED = TINY_ARGS["embed_dim"]
HEAD_5 = EMBED * 5 + 5  # classifier of the tiny ViT with 5 classes


def trivial_method(name: str) -> type[Method]:
    """A Method subclass with class attribute `name` whose apply changes nothing."""
    return type("Trivial", (Method,), {"name": name, "apply": lambda self, model: model})


def params_cli(methods: str, *extra: str, pythonpath: Path | None = None):
    """`petlbench params` for `methods` on the tiny ViT with 5 classes."""
    return petlbench_cli("params", "--backbone", "vit_tiny_patch16_224", "--backbone-args", TINY_BACKBONE_ARGS,
                         "--num-classes", "5", "--methods", methods, *extra, pythonpath=pythonpath)


# --------------------------------------------------------------------------------------------------
# run-time registration


@dataclass
class FinalNormConfig:
    repeat: int = 1
    which: Literal["last", "all"] = "last"


class FinalNorm(Method):
    """Unfreezes the last LayerNorm of the model (found structurally), or all of them."""

    name = "test_final_norm"
    description = "test method: train the final norm"
    Config = FinalNormConfig

    def apply(self, model):
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
        for norm in norms[-1:] if self.config.which == "last" else norms:
            unfreeze(norm)
        return model


@pytest.fixture
def final_norm():
    register_method(FinalNorm)
    try:
        yield FinalNorm
    finally:
        unregister_method(FinalNorm.name)
    assert FinalNorm.name not in available_methods()


def test_runtime_method_is_listed_with_origin_runtime(final_norm):
    entries = available_methods()
    assert entries[final_norm.name].origin == "runtime"
    assert entries[final_norm.name].load() is final_norm
    assert get_method(final_norm.name) is final_norm
    # the built-ins are still there, with their own origin
    for name in BUILTIN:
        assert entries[name].origin == "builtin"


def test_runtime_method_spec_builds_typed_config(final_norm):
    method = parse_method_spec("test_final_norm:repeat=3:which=all")
    assert isinstance(method, final_norm)
    assert method.config.repeat == 3 and type(method.config.repeat) is int
    assert method.config.which == "all"
    default = parse_method_spec("test_final_norm")
    assert default.config == FinalNormConfig()
    # it also works inside a list next to built-ins
    methods = parse_method_list("linear, test_final_norm:which=last")
    assert [m.name for m in methods] == ["linear", "test_final_norm"]


def test_runtime_method_trains_what_it_says(final_norm, tiny_spec):
    _, last, _ = build_model(tiny_spec, parse_method_spec("test_final_norm"), 5, seed=0)
    assert last.trainable_excl_head == 2 * EMBED  # final norm: weight + bias
    assert last.head == HEAD_5 and last.added == 0
    _, every, _ = build_model(tiny_spec, parse_method_spec("test_final_norm:which=all"), 5, seed=0)
    # 2 blocks x (norm1, norm2) + final norm
    assert every.trainable_excl_head == 5 * 2 * EMBED


def test_register_same_name_twice_is_an_error(final_norm):
    with pytest.raises(UserError) as err:
        register_method(trivial_method("test_final_norm"))
    msg = str(err.value)
    assert "'test_final_norm'" in msg and "already registered" in msg and "runtime" in msg
    assert available_methods()["test_final_norm"].load() is final_norm  # the first one stays


def test_register_builtin_name_is_an_error():
    try:
        with pytest.raises(UserError) as err:
            register_method(trivial_method("linear"))
        msg = str(err.value)
        assert "'linear'" in msg and "builtin" in msg
        assert available_methods()["linear"].origin == "builtin"
    finally:
        unregister_method("linear")  # only drops a runtime registration; the built-in stays


def test_register_rejects_non_methods():
    class NotAMethod:
        name = "test_not_a_method"

    with pytest.raises(UserError, match="not a petlbench.method.Method subclass"):
        register_method(NotAMethod)
    assert "test_not_a_method" not in available_methods()


def test_register_rejects_method_without_name():
    class Nameless(Method):
        def apply(self, model):
            return model

    with pytest.raises(UserError, match="Nameless"):
        register_method(Nameless)


def test_register_checks_the_config_declaration():
    @dataclass
    class BadRange:
        mode: Annotated[str, Range(min=1)] = "a"

    bad = type("BadRangeMethod", (Method,), {"name": "test_bad_range", "Config": BadRange,
                                             "apply": lambda self, model: model})
    with pytest.raises(UserError) as err:
        register_method(bad)
    msg = str(err.value)
    assert "'test_bad_range'" in msg and "BadRange.mode" in msg and "int or float" in msg
    not_dataclass = type("Plain", (Method,), {"name": "test_plain_config", "Config": dict,
                                              "apply": lambda self, model: model})
    with pytest.raises(UserError, match="Config must be a dataclass"):
        register_method(not_dataclass)
    assert "test_bad_range" not in available_methods() and "test_plain_config" not in available_methods()


def test_unregister_leaves_builtins_alone():
    unregister_method("linear")
    assert available_methods()["linear"].origin == "builtin"
    unregister_method("never_registered")  # no error


# --------------------------------------------------------------------------------------------------
# option parsing


def test_unknown_method_lists_valid_names():
    with pytest.raises(UserError) as err:
        parse_method_spec("nosuch")
    msg = str(err.value)
    assert "'nosuch'" in msg and "valid:" in msg
    for name in BUILTIN:
        assert name in msg


def test_unknown_option_lists_valid_keys():
    with pytest.raises(UserError) as err:
        parse_method_spec("vpt_deep:tokenz=5")
    msg = str(err.value)
    assert "method vpt_deep" in msg and "unknown option 'tokenz'" in msg
    for key in ("tokens=100", "dropout=0.1", "init=xavier"):
        assert key in msg


@pytest.mark.parametrize("value", ["abc", "true", "1.5"])
def test_wrong_type_lists_valid_keys(value):
    with pytest.raises(UserError) as err:
        parse_method_spec(f"vpt_deep:tokens={value}")
    msg = str(err.value)
    assert "option 'tokens'" in msg and "expects int" in msg and "got" in msg
    assert "valid:" in msg and "dropout" in msg and "init" in msg


def test_value_outside_literal_choices():
    with pytest.raises(UserError) as err:
        parse_method_spec("vpt_deep:init=uniform")
    msg = str(err.value)
    assert "option 'init'" in msg and "xavier|normal|zeros" in msg and "'uniform'" in msg


def test_runtime_method_option_errors(final_norm):
    with pytest.raises(UserError, match=r"last\|all"):
        parse_method_spec("test_final_norm:which=first")
    with pytest.raises(UserError) as err:
        parse_method_spec("test_final_norm:repeat=two")
    assert "expects int" in str(err.value) and "which=last" in str(err.value)


def test_malformed_pair_and_empty_list():
    with pytest.raises(UserError, match="expected key=value"):
        parse_method_spec("vpt_deep:tokens")
    with pytest.raises(UserError, match="comma-separated list"):
        parse_method_list(" , ")


def test_typed_values_and_defaults():
    m = parse_method_spec("vpt_deep:tokens=7:dropout=0:init=zeros")
    assert m.config.tokens == 7 and type(m.config.tokens) is int
    assert m.config.dropout == 0.0 and type(m.config.dropout) is float  # int accepted for a float
    assert m.config.init == "zeros"
    # a suite's method_options replace class defaults; the spec wins over both
    defaults = {"vpt_deep": {"tokens": 4, "init": "normal"}}
    m = parse_method_spec("vpt_deep:tokens=9", defaults)
    assert (m.config.tokens, m.config.init, m.config.dropout) == (9, "normal", 0.1)
    with pytest.raises(UserError, match="unknown option 'tokenz'"):
        parse_method_spec("vpt_deep", {"vpt_deep": {"tokenz": 4}})


# --------------------------------------------------------------------------------------------------
# entry-point plugins, with real temporary distributions on sys.path

TOY_SOURCE = '''
from dataclasses import dataclass

import torch
from torch import nn

from petlbench.method import Method


@dataclass
class ToyConfig:
    tokens: int = 3


class Shift(nn.Module):
    def __init__(self, tokens, dim):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(tokens, dim))

    def forward(self, x):
        return x + self.p.sum(0)


class ToyMethod(Method):
    name = "toy_prompt"
    description = "toy plugin: a learned shift before the first block"
    Config = ToyConfig

    def apply(self, model):
        model.blocks[0] = nn.Sequential(Shift(self.config.tokens, model.embed_dim), model.blocks[0])
        return model


class ImpostorLinear(Method):
    name = "linear"

    def apply(self, model):
        return model


NOT_A_METHOD = {"name": "toy_object"}
'''


def make_dist(root: Path, dist: str, package: str, entry_points: dict[str, str], source: str = TOY_SOURCE) -> Path:
    """Write an installed-looking distribution (package + .dist-info) into `root`."""
    pkg = root / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(source)
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[petlbench.methods]\n{lines}")
    return root


@pytest.fixture
def clean_modules():
    """Forget plugin modules imported in-process, so each test imports its own."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("petl_plugin_"):
            del sys.modules[name]


def test_entry_point_plugin_via_cli(tmp_path):
    make_dist(tmp_path, "petl-plugin-demo", "petl_plugin_demo", {"toy_prompt": "petl_plugin_demo:ToyMethod"})

    ls = petlbench_cli("ls", "methods", pythonpath=tmp_path)
    assert ls.returncode == 0, ls.stderr
    line = next(l for l in ls.stdout.splitlines() if l.startswith("toy_prompt "))
    assert "entry point" in line and "petl-plugin-demo" in line
    assert "toy plugin" in line
    assert "tokens=3 (int)" in ls.stdout
    assert "linear  [builtin]" in ls.stdout

    params = params_cli("toy_prompt,toy_prompt:tokens=2", "--format", "json", pythonpath=tmp_path)
    assert params.returncode == 0, params.stderr
    rows = json.loads(params.stdout)
    assert [r["method"] for r in rows] == ["toy_prompt", "toy_prompt:tokens=2"]
    for row, tokens in zip(rows, (3, 2)):
        assert row["added"] == tokens * EMBED
        assert row["trainable_excl_head"] == tokens * EMBED
        assert row["head"] == HEAD_5
        assert row["trainable"] == tokens * EMBED + HEAD_5
        assert row["total"] == row["backbone"] + HEAD_5 + tokens * EMBED

    # without the distribution on the path, the method is unknown
    gone = params_cli("toy_prompt")
    assert_one_line_error(gone, "unknown method 'toy_prompt'")


def test_entry_point_plugin_in_process(tmp_path, monkeypatch, clean_modules, tiny_spec):
    make_dist(tmp_path, "petl-plugin-demo", "petl_plugin_demo", {"toy_prompt": "petl_plugin_demo:ToyMethod"})
    assert "toy_prompt" not in available_methods()
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = available_methods()
    entry = entries["toy_prompt"]
    assert entry.origin == "entry point (petl-plugin-demo)"
    assert entry.target == "petl_plugin_demo:ToyMethod"
    cls = entry.load()
    assert cls.__name__ == "ToyMethod" and issubclass(cls, Method)
    method = parse_method_spec("toy_prompt:tokens=4")
    assert isinstance(method, cls) and method.config.tokens == 4
    _, counts, _ = build_model(tiny_spec, method, 5, seed=0)
    assert counts.added == 4 * EMBED and counts.trainable_excl_head == 4 * EMBED


def test_runtime_name_clashing_with_entry_point(tmp_path, monkeypatch, clean_modules):
    make_dist(tmp_path, "petl-plugin-demo", "petl_plugin_demo", {"toy_prompt": "petl_plugin_demo:ToyMethod"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as err:
        register_method(trivial_method("toy_prompt"))
    assert "already registered" in str(err.value) and "petl-plugin-demo" in str(err.value)
    assert available_methods()["toy_prompt"].origin == "entry point (petl-plugin-demo)"


def test_entry_point_clash_with_builtin_cli(tmp_path):
    make_dist(tmp_path, "petl-plugin-clash", "petl_plugin_clash", {"linear": "petl_plugin_clash:ImpostorLinear"})
    proc = petlbench_cli("ls", "methods", pythonpath=tmp_path)
    line = assert_one_line_error(proc, "clash", "'linear'", "builtin", "entry point", "petl-plugin-clash")
    assert proc.stdout == ""
    assert line.startswith("petlbench: error:")


def test_entry_point_clash_in_process(tmp_path, monkeypatch, clean_modules):
    make_dist(tmp_path / "a", "petl-plugin-clash", "petl_plugin_clash", {"linear": "petl_plugin_clash:ImpostorLinear"})
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    with pytest.raises(UserError) as err:
        available_methods()
    msg = str(err.value)
    assert "clash" in msg and "'linear'" in msg and "builtin" in msg and "petl-plugin-clash" in msg


def test_two_distributions_offering_one_name(tmp_path, monkeypatch, clean_modules):
    make_dist(tmp_path / "one", "petl-plugin-one", "petl_plugin_one", {"toy_prompt": "petl_plugin_one:ToyMethod"})
    make_dist(tmp_path / "two", "petl-plugin-two", "petl_plugin_two", {"toy_prompt": "petl_plugin_two:ToyMethod"})
    monkeypatch.syspath_prepend(str(tmp_path / "one"))
    monkeypatch.syspath_prepend(str(tmp_path / "two"))
    with pytest.raises(UserError) as err:
        get_method("toy_prompt")
    msg = str(err.value)
    assert "clash" in msg and "petl-plugin-one" in msg and "petl-plugin-two" in msg


def test_entry_point_name_mismatch_cli(tmp_path):
    # the entry point says toy_other, the class says toy_prompt
    make_dist(tmp_path, "petl-plugin-bad", "petl_plugin_bad", {"toy_other": "petl_plugin_bad:ToyMethod"})
    proc = params_cli("toy_other", pythonpath=tmp_path)
    assert_one_line_error(proc, "'toy_other'", "petl-plugin-bad", "ToyMethod", "'toy_prompt'")
    ls = petlbench_cli("ls", "methods", pythonpath=tmp_path)
    assert_one_line_error(ls, "'toy_other'", "'toy_prompt'")


def test_entry_point_to_non_method_cli(tmp_path):
    make_dist(tmp_path, "petl-plugin-obj", "petl_plugin_obj", {"toy_object": "petl_plugin_obj:NOT_A_METHOD"})
    proc = petlbench_cli("ls", "methods", pythonpath=tmp_path)
    assert_one_line_error(proc, "'toy_object'", "petl-plugin-obj", "not a petlbench.method.Method subclass")


def test_bad_entry_points_in_process(tmp_path, monkeypatch, clean_modules):
    make_dist(tmp_path, "petl-plugin-bad", "petl_plugin_bad", {
        "toy_other": "petl_plugin_bad:ToyMethod",
        "toy_object": "petl_plugin_bad:NOT_A_METHOD",
        "toy_missing": "petl_plugin_bad:NoSuchClass",
        "toy_nomodule": "petl_plugin_nowhere:ToyMethod",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = available_methods()  # listing does not import anything
    assert {"toy_other", "toy_object", "toy_missing", "toy_nomodule"} <= set(entries)
    with pytest.raises(UserError, match=r"class ToyMethod has name 'toy_prompt'"):
        get_method("toy_other")
    with pytest.raises(UserError, match=r"not a petlbench\.method\.Method subclass"):
        get_method("toy_object")
    with pytest.raises(UserError, match=r"cannot load petl_plugin_bad:NoSuchClass"):
        get_method("toy_missing")
    with pytest.raises(UserError, match=r"cannot load petl_plugin_nowhere:ToyMethod"):
        parse_method_spec("toy_nomodule:tokens=2")


# --------------------------------------------------------------------------------------------------
# CLI errors: exit 2, one line, no traceback


def test_cli_wrong_option_type(tmp_path):
    proc = params_cli("vpt_deep:tokens=abc")
    assert_one_line_error(proc, "vpt_deep", "'tokens'", "'abc'", "valid:", "dropout", "init")
    assert proc.stdout == ""


def test_cli_unknown_method(tmp_path):
    proc = params_cli("linear,nosuch")
    assert_one_line_error(proc, "'nosuch'", "valid:", *sorted(BUILTIN))
    assert proc.stdout == ""
