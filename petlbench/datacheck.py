"""`petlbench data check`: is a data root complete and readable for a suite, before hours of runs find out?

Per task: the folder (under its name or an alias), the images listed per split of the suite's
protocol roles, classes seen vs expected, and every problem with the exact file: a missing folder
or split file, a bad line or label, an image listed twice in a split, a path leaving the task folder,
a missing or undecodable image. Images go through the decode `run` uses (`data.open_rgb`), so data
check refuses what a run would. Problems are collected, not raised, so one pass shows all of them.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from petlbench.data import open_rgb
from petlbench.errors import UserError
from petlbench.layouts import find_task_dir, list_images, split_duplicates
from petlbench.specs import Task
from petlbench.suite import Suite, load_suite

SHOWN = 5  # problems printed per task; the rest are counted


@dataclass
class TaskCheck:
    task: Task
    folder: Path | None  # None: not found under any of its names
    counts: dict[str, int | None] = field(default_factory=dict)  # split -> images listed; None: unusable
    classes_seen: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def split_names(suite: Suite) -> list[str]:
    """Every split file the suite's protocols read, in role order (train, val, trainval, test)."""
    return list(dict.fromkeys(s for role in ("train", "val", "trainval", "test") for s in suite.splits[role]))


def verify_image(path: Path) -> str | None:
    """None when `run` would decode the file; else what it would say, without the path."""
    if not path.is_file():
        return "listed image not found"
    try:
        open_rgb(path, draft=(1, 1))  # JPEG: decode at 1/8 scale; every block is still read
    except UserError as exc:
        return str(exc).removeprefix(f"{path}: ")
    return None


def check_suite(suite: Suite, data_root: Path, tasks: list[Task] | None = None,
                workers: int | None = None) -> list[TaskCheck]:
    """List every split of every task, then open every listed image once, in a thread pool."""
    checks, owners = [], {}
    for task in tasks or suite.tasks:
        check, paths = list_task(suite, data_root, task)
        checks.append(check)
        for path in paths:
            owners.setdefault(path, check)
    if owners:
        print(f"checking {len(owners):,} images under {data_root} ...", file=sys.stderr, flush=True)
    with ThreadPoolExecutor(max_workers=workers or min(32, 4 * (os.cpu_count() or 1))) as pool:
        for path, why in zip(owners, pool.map(verify_image, owners)):
            if why:
                owners[path].problems.append(f"{path}: {why}")
    return checks


def list_task(suite: Suite, data_root: Path, task: Task) -> tuple[TaskCheck, list[Path]]:
    """The task's split counts and listing problems, and the images its splits name (each once)."""
    task_dir = find_task_dir(data_root, task)
    check = TaskCheck(task, task_dir if task_dir.is_dir() else None)
    labels, paths = set(), {}
    for split in split_names(suite):
        try:
            items = list_images(suite.layout, task_dir, task, split)
        except UserError as exc:
            check.counts[split] = None
            if str(exc) not in check.problems:  # e.g. FGVC's class count, said once for all splits
                check.problems.append(str(exc))
            if check.folder is None:
                break
            continue
        check.counts[split] = len(items)
        check.problems += split_duplicates(suite.layout, task_dir, task, split)
        labels.update(label for _, label in items)
        paths.update(dict.fromkeys(path for path, _ in items))
    check.classes_seen = len(labels)
    return check, list(paths)


def render(checks: list[TaskCheck], suite: Suite, data_root: Path) -> str:
    from tabulate import tabulate

    splits = split_names(suite)
    rows = [[c.task.name, c.folder.name if c.folder else "MISSING",
             *("-" if c.counts.get(s) is None else c.counts[s] for s in splits),
             f"{c.classes_seen}/{c.task.classes}", "ok" if c.ok else f"{len(c.problems)} problem(s)"]
            for c in checks]
    lines = [f"suite {suite.name} ({suite.layout} layout), data root {data_root}", "",
             tabulate(rows, headers=["task", "folder", *splits, "classes seen/expected", "status"],
                      tablefmt="github", disable_numparse=True)]
    bad = [c for c in checks if not c.ok]
    if bad:
        lines += ["", "problems:"]
        for c in bad:
            lines += [f"  {c.task.name}: {p}" for p in c.problems[:SHOWN]]
            if len(c.problems) > SHOWN:
                lines.append(f"  {c.task.name}: ... and {len(c.problems) - SHOWN} more")
    lines += ["", f"{len(checks) - len(bad)} of {len(checks)} tasks ok" +
              (f"; with problems: {', '.join(c.task.name for c in bad)}" if bad else "")]
    return "\n".join(lines)


def run_check(suite: str | Suite, data_root: str | Path | None, tasks: list[str] | None = None) -> int:
    """Print the report; 0 when every task is complete and readable, 1 otherwise."""
    from petlbench.plan import resolve_data_root

    the_suite = suite if isinstance(suite, Suite) else load_suite(suite)
    selected = the_suite.select(tasks)
    root = resolve_data_root(the_suite, str(data_root) if data_root is not None else None)
    if not root.is_dir():
        raise UserError(f"data root {root}: folder not found (from --data-root or $PETLBENCH_DATA_ROOT)")
    checks = check_suite(the_suite, root, selected)
    print(render(checks, the_suite, root))
    return 0 if all(c.ok for c in checks) else 1
