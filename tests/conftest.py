"""Shared fixtures and helpers: a tiny timm ViT (random weights, nothing fetched), tiny NOAH-layout tasks, and the
real CLI (in this process, or in a subprocess where the process is what is tested)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from petlbench.backbone import BackboneSpec

TINY_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}
TINY_BACKBONE_ARGS = ",".join(f"{k}={v}" for k, v in TINY_ARGS.items())


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Runs in tests (and the CLI they start) decode into a cache of their own, never the user's."""
    os.environ["PETLBENCH_CACHE"] = str(tmp_path_factory.mktemp("decoded-cache"))
    yield


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo's data and its pre-trained tiny ViT, made once per test session (about 40 s)."""
    from petlbench.engine.demo_backbone import prepare
    from petlbench.suite import load_suite
    root = tmp_path_factory.mktemp("demo-data")
    prepare(root, load_suite("demo"), log=lambda line: None)
    return root


@pytest.fixture
def tiny_spec() -> BackboneSpec:
    return BackboneSpec("vit_tiny_patch16_224", dict(TINY_ARGS), pretrained=False)


def petlbench_cli(*args: str, env: dict | None = None, cwd: Path | None = None, pythonpath: Path | None = None,
                  timeout: int = 600, process: bool = False) -> subprocess.CompletedProcess:
    """Run the real CLI as users would, its output captured: `petlbench.cli.main(ARGS)` with the environment
    `env` added, in `cwd` (default: a fresh empty folder) and sys.stdout/stderr captured; anything escaping
    `main` is written to the captured stderr as the interpreter would (a traceback, exit 1).

    In this process by default (a Python start with torch costs about 3 s of CPU, the suite runs the CLI about a
    hundred times); in a subprocess (`python -m petlbench.cli`) with `process=True`, where the process is what is
    tested (worker processes writing to our stdout, signals), and always with `pythonpath` (plugins found on
    sys.path at start-up). There, what is on sys.path is only what the installation and PYTHONPATH put there.
    """
    with tempfile.TemporaryDirectory() if cwd is None else contextlib.nullcontext(cwd) as where:
        if process or pythonpath is not None:
            full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
            if pythonpath is not None:
                full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), full_env.get("PYTHONPATH")]))
            return subprocess.run([sys.executable, "-m", "petlbench.cli", *args], capture_output=True, text=True,
                                  env=full_env, cwd=where, timeout=timeout)
        return cli_in_process(list(args), env or {}, Path(where))


def cli_in_process(argv: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    from petlbench.cli import main
    out, err, saved_env, saved_cwd = io.StringIO(), io.StringIO(), dict(os.environ), os.getcwd()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's own errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # what a user would see: the interpreter's traceback, exit 1
                traceback.print_exc(file=sys.stderr)
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["petlbench", *argv], code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error from the CLI: exit 2, no traceback, one stderr line naming every needle; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("petlbench: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_tiny_suite(path: Path, tasks: dict[str, int], epochs: int = 2, extra: str = "") -> Path:
    """A user suite YAML for tiny NOAH-layout tasks on the tiny random-init ViT."""
    lines = [
        "name: tiny", "layout: noah",
        "backbone:", "  name: vit_tiny_patch16_224", f"  args: {TINY_ARGS}", "  pretrained: false",
        f"train: {{epochs: {epochs}, warmup_epochs: 1, batch_size: 16, eval_batch_size: 64}}",
        "tasks:", *[f"  - {{name: {n}, classes: {c}, group: structured}}" for n, c in tasks.items()], extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_tasks(tmp_path) -> Path:
    """Two small tasks written by the demo generator in the NOAH layout."""
    from petlbench.data.demo import write_task
    root = tmp_path / "data"
    for i, name in enumerate(("count", "position")):
        write_task(root, name, seed=i, sizes={"train800": 48, "val200": 16, "test": 32})
    return root
