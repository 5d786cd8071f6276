"""The demos' shared preparation (engine.demo_once): tasks and checkpoint made once, the marker naming the demo's
version; made again when the version changed or the checkpoint is gone; an unknown task is one line."""
from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch

from petlbench.data.demo import TASKS, VERSION, write_task
from petlbench.engine.demo_once import prepare_once
from petlbench.errors import UserError
from petlbench.suite import load_suite
from petlbench.weights import write_safetensors

SIZES = {"train800": 4, "val200": 2, "test": 2}


def test_prepared_once_and_again_when_stale(tmp_path):
    suite = load_suite("demo")
    made = []

    def pretrain(checkpoint):  # a real (small) checkpoint where the demo writes its own
        made.append(checkpoint)
        return {"upstream": {"sha256": write_safetensors({"w": torch.zeros(2)}, checkpoint)}}

    prepare = functools.partial(prepare_once, tmp_path, suite, "demo", VERSION, TASKS,
                                functools.partial(write_task, sizes=SIZES), 100, pretrain, "a backbone")
    lines = []
    prepare(lines.append)
    checkpoint = tmp_path / suite.backbone["checkpoint"]
    marker = json.loads((tmp_path / "demo.json").read_text())
    assert made == [checkpoint] and checkpoint.is_file()
    assert marker["version"] == VERSION and "sha256" in marker["upstream"] and marker["seconds"] >= 0
    assert all((tmp_path / t.name / "test.txt").is_file() for t in suite.tasks)
    assert lines[0].startswith("demo: writing synthetic tasks") and lines[-1].startswith("demo: ready in")
    prepare(lambda line: pytest.fail(f"prepared again: {line}"))
    assert len(made) == 1, "idempotent: the marker holds this version and the checkpoint is there"
    checkpoint.unlink()
    prepare(lines.append)
    assert len(made) == 2, "a lost checkpoint is made again"
    (tmp_path / "demo.json").write_text(json.dumps({**marker, "version": "older"}))
    prepare(lines.append)
    assert len(made) == 3, "another version of the demo data is made again"


def test_unknown_task_is_one_line(tmp_path):
    suite = load_suite("demo")
    odd = dataclasses.replace(suite, tasks=[dataclasses.replace(suite.tasks[0], name="nope")])
    with pytest.raises(UserError, match=r"demo task 'nope' unknown; demo tasks: shapes"):
        prepare_once(tmp_path, odd, "demo", VERSION, TASKS, write_task, 100, lambda c: {}, "x", print)
    assert not (tmp_path / "demo.json").exists()
