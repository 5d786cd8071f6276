"""What the two packaged demos' preparers share (engine.demo_backbone, engine.demo_clip): write the suite's synthetic
tasks and pre-train the backbone once, marked by a file that says which version of the demo data it made; a
preparer called again returns at once while the marker holds this version and the checkpoint exists."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from petlbench.errors import UserError
from petlbench.records import write_atomic


def prepared(marker: Path, checkpoint: Path, version) -> bool:
    """Did an earlier call make this version of the demo (its marker and checkpoint both there)?"""
    try:
        return checkpoint.is_file() and json.loads(marker.read_text()).get("version") == version
    except (OSError, ValueError):
        return False


def prepare_once(root: Path, suite, name: str, version, tasks: dict, write_task: Callable[..., None], first_seed: int,
                 pretrain: Callable[[Path], dict], what: str, log: Callable[[str], None]) -> None:
    """Under `root`: the suite's tasks (names among `tasks`, task i drawn with seed first_seed + i), then
    `pretrain(checkpoint)`, whose fields go into the marker `<name>.json` beside the version and the seconds."""
    marker, checkpoint = root / f"{name}.json", root / suite.backbone["checkpoint"]
    if prepared(marker, checkpoint, version):
        return
    start = time.perf_counter()
    log(f"{name}: writing synthetic tasks to {root} and pre-training {what} (once)")
    for i, task in enumerate(suite.tasks):
        if task.name not in tasks:
            raise UserError(f"{suite.path}: {name} task {task.name!r} unknown; {name} tasks: {', '.join(tasks)}")
        write_task(root, task.name, seed=first_seed + i)
    fields = pretrain(checkpoint)
    write_atomic(marker, {"version": version, **fields, "seconds": round(time.perf_counter() - start, 1)})
    log(f"{name}: ready in {time.perf_counter() - start:.0f}s")
