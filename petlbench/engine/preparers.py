"""A suite's `prepare:` hook: the packaged demos make their own data and pre-trained backbone before a run."""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def prepare_suite(suite, root: Path, log: Callable[[str], None] = print) -> None:
    """Run the suite's preparer under `root` (each is idempotent); nothing for a suite without one."""
    if suite.prepare == "demo":
        from petlbench.engine.demo_backbone import prepare
    elif suite.prepare == "demo-clip":
        from petlbench.engine.demo_clip import prepare
    else:
        return
    prepare(root, suite, log=log)
