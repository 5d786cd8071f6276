"""Bad input on the command line is one line and exit code 2, refused before any work: suite aliases, --train,
--methods, --grid, --device, `profile`, `params`, backbones and checkpoints.

Most cases call `petlbench.cli.main` in-process (the same code path, seconds faster); a few run the real CLI."""
from __future__ import annotations

import argparse

import pytest
import torch

from petlbench.engine import device as device_module
from petlbench.backbone import BackboneSpec, create_backbone, read_state_dict
from petlbench.cli import main
from petlbench.engine.device import pick_device
from petlbench.errors import UserError
from tests.conftest import TINY_ARGS, TINY_BACKBONE_ARGS, assert_one_line_error, petlbench_cli, write_tiny_suite

TINY = ["--backbone", "vit_tiny_patch16_224", "--backbone-args", TINY_BACKBONE_ARGS]


def cli_error(capsys, *argv: str) -> str:
    """main(argv) exits 2 with one stderr line starting `petlbench: error: `; returns that line."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    assert code == 2, (code, out.out, out.err)
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("petlbench: error: "), out.err
    assert out.out == ""
    return lines[0]


@pytest.fixture
def no_data_root(monkeypatch):
    monkeypatch.delenv("PETLBENCH_DATA_ROOT", raising=False)


# --------------------------------------------------------------------------------------------------
# run


def test_run_suite_alias_as_users_write_it(no_data_root):
    """`--suite vtab` finds vtab1k: the run gets as far as asking for the data root."""
    proc = petlbench_cli("run", "--methods", "vpt_deep,linear", "--suite", "vtab", "--train", "lr=1e-3")
    assert_one_line_error(proc, "suite 'vtab1k' needs a data root")


@pytest.mark.parametrize("flag,value,needles", [
    ("--train", "epochs=0", ["--train", "'epochs'", ">= 1", "got 0"]),
    ("--train", "batch_size=0", ["--train", "'batch_size'"]),
    ("--train", "lr=-1e-3", ["--train", "'lr'", "> 0"]),
    ("--train", "momentum=1", ["--train", "'momentum'", "[0, 1)"]),
    ("--methods", "vpt_deep:tokens=0", ["method vpt_deep", "'tokens'", "in [1, 1000]"]),
    ("--methods", "adapter:bottleneck=0", ["method adapter", "'bottleneck'"]),
    ("--device", "foo", ["--device", "'foo'", "cpu", "cuda"]),
    ("--grid", "{lr: [0.1], lr: [0.2]}", ["--grid", "'lr'", "twice"]),
])
def test_run_refuses_nonsense_before_any_work(capsys, tmp_path, no_data_root, flag, value, needles):
    methods = [] if flag == "--methods" else ["--methods", "linear"]
    line = cli_error(capsys, "run", "--suite", "vtab", *methods, "--out", str(tmp_path / "out"), flag, value)
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "out").exists()


def test_run_tune_grid_values_are_checked(capsys, tmp_path):
    suite = write_tiny_suite(tmp_path / "s.yaml", {"count": 6})
    (tmp_path / "data").mkdir()
    line = cli_error(capsys, "run", "--suite", str(suite), "--methods", "linear", "--data-root", str(tmp_path / "data"),
                     "--protocol", "tune", "--grid", "{lr: [1e-3, 0]}", "--out", str(tmp_path / "out"))
    assert "--grid" in line and "'lr'" in line and "> 0" in line


def test_run_mean_std_must_be_usable(capsys, no_data_root):
    line = cli_error(capsys, "run", "--suite", "vtab", "--methods", "linear", "--std", "0.5,0,0.5")
    assert "--std" in line and "positive" in line
    line = cli_error(capsys, "run", "--suite", "vtab", "--methods", "linear", "--mean", "0.5,nan,0.5")
    assert "--mean" in line and "nan" in line


def test_argparse_errors_are_one_line(capsys):
    params = ["params", "--backbone", "vit_tiny_patch16_224", "--methods", "linear", "--num-classes"]
    line = cli_error(capsys, *params, "abc")
    assert "--num-classes" in line and "'abc'" in line
    line = cli_error(capsys, *params, "0")
    assert "--num-classes" in line and "positive" in line
    line = cli_error(capsys, "run", "--suite", "vtab", "--methods", "linear", "--seeds", "a")
    assert "--seeds" in line and "'a'" in line


# --------------------------------------------------------------------------------------------------
# devices


def test_pick_device_validates(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    for bad in ("foo", "cuda:x", ""):
        with pytest.raises(UserError, match="--device"):
            pick_device(bad)
    with pytest.raises(UserError) as err:
        pick_device("cuda")
    assert "--device cuda" in str(err.value) and "no CUDA" in str(err.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda:0") and pick_device("auto") == torch.device("cuda")
    with pytest.raises(UserError) as err:
        pick_device("cuda:7")
    assert "cuda:7" in str(err.value) and "1 CUDA device" in str(err.value) and "cuda:0" in str(err.value)


def test_train_module_no_longer_has_its_own_device_picker():
    import inspect

    import petlbench.sweep.jobs
    import petlbench.tools.profile
    import petlbench.engine.train
    assert not hasattr(petlbench.engine.train, "pick_device")
    assert petlbench.tools.profile.pick_device is device_module.pick_device
    assert "from petlbench.engine.device import pick_device" in inspect.getsource(petlbench.sweep.jobs.context)  # where jobs run


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_one_line():
    proc = petlbench_cli("profile", "--methods", "linear", *TINY, "--device", "cuda")
    assert_one_line_error(proc, "--device cuda", "no CUDA")


# --------------------------------------------------------------------------------------------------
# profile checks --train as run does


@pytest.mark.parametrize("extra,needles", [
    (["--train", "lr=abc"], ["--train", "'lr'", "float", "'abc'"]),
    (["--train", "foo=1"], ["--train", "unknown option 'foo'"]),
    (["--train", "batch_size=0"], ["--train", "'batch_size'", ">= 1"]),
    (["--train", "optimizer=lamb"], ["--train", "'optimizer'", "adamw|sgd", "'lamb'"]),
    (["--images", "0"], ["--images", "positive"]),
    (["--eval-images", "0"], ["--eval-images", "positive"]),
    (["--epochs", "0"], ["--epochs", "positive"]),
    (["--epochs", "-2"], ["--epochs", "positive"]),
])
def test_profile_refuses_nonsense(capsys, extra, needles):
    line = cli_error(capsys, "profile", "--methods", "linear", *TINY, "--images", "8", "--eval-images", "8", *extra)
    for needle in needles:
        assert needle in line, (needle, line)


def test_profile_accepts_exponent_floats(capsys):
    assert main(["profile", "--methods", "linear", *TINY, "--images", "8", "--eval-images", "8", "--epochs", "1",
                 "--train", "lr=1e-3,batch_size=8", "--format", "json"]) == 0
    assert '"batch_size": 8' in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# backbones and checkpoints


@pytest.mark.parametrize("name,needles", [
    ("vit_bse_patch16_224", ["'vit_bse_patch16_224'", "unknown to timm", "vit_base_patch16_224"]),
    ("vit_base_patch16_224.augreg_in2k", ["'augreg_in2k'", "vit_base_patch16_224.augreg_in21k"]),
])
def test_unknown_backbone_suggests_close_names(name, needles):
    for pretrained in (False, True):  # checked before anything is created or fetched
        with pytest.raises(UserError) as err:
            create_backbone(BackboneSpec(name, pretrained=pretrained), 5)
        msg = str(err.value)
        assert "\n" not in msg and "fetch" not in msg, msg
        for needle in needles:
            assert needle in msg, (needle, msg)


@pytest.mark.parametrize("args,needles", [
    ({"depth": "abc"}, ["'depth'", "int", "'abc'"]),
    ({"mlp_ratio": "x"}, ["'mlp_ratio'", "float", "'x'"]),
    ({"foo": 1}, ["'foo'", "VisionTransformer has no argument", "valid: "]),
    ({"num_heads": 0}, ["num_heads=0", "ZeroDivisionError"]),
])
def test_bad_backbone_args_name_the_key(args, needles):
    with pytest.raises(UserError) as err:
        create_backbone(BackboneSpec("vit_tiny_patch16_224", {**TINY_ARGS, **args}, pretrained=False), 5)
    msg = str(err.value)
    assert msg.startswith("--backbone-args") and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_params_gets_the_same_checks():
    proc = petlbench_cli("params", "--backbone", "vit_bse_patch16_224", "--num-classes", "5", "--methods", "linear")
    assert_one_line_error(proc, "unknown to timm", "vit_base_patch16_224")


def test_params_backbone_args_in_process(capsys):
    line = cli_error(capsys, "params", "--backbone", "vit_tiny_patch16_224", "--backbone-args",
                     TINY_BACKBONE_ARGS.replace("depth=2", "depth=abc"), "--num-classes", "5", "--methods", "linear")
    assert "'depth'" in line and "int" in line


def test_checkpoint_with_a_string_value(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"blocks.0.weight": torch.zeros(2), "note": "trained by me"}, path)
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "'note'" in msg and "tensor" in msg and "\n" not in msg


def test_checkpoint_with_pickled_objects(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "weights_only" in msg and "state dict of tensors" in msg and "\n" not in msg
