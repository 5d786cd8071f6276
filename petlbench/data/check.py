"""`petlbench data check`: is a data root complete and readable for a suite, before hours of runs find out?

Per task: the folder (under its name or an alias), the images listed per split of the suite's
protocol roles, classes seen vs expected, and every problem with the exact file: a missing folder
or split file, a bad line or label, an image listed twice in a split, a path leaving the task folder,
a missing or undecodable image. Images go through the decode `run` uses (`data.open_rgb`), so data
check refuses what a run would. Problems are collected, not raised, so one pass shows all of them.

Leakage: an image of a training split (train, val, trainval) that is also in the test split, by path or by
content (a hash of the decoded pixels, so a copy under another name is caught), is reported as a warning,
an error with --strict. The hash comes from the decode the check does anyway (JPEGs at 1/8 scale, which
every copy of the same file decodes alike), so it costs a small fraction of it.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from petlbench.data.decode import open_rgb
from petlbench.errors import UserError
from petlbench.data.layouts import find_task_dir, list_images, split_duplicates
from petlbench.specs import Task
from petlbench.suite import Suite, load_suite

SHOWN = 5  # problems printed per task; the rest are counted
HASH_SECONDS: list[float] = []  # time spent hashing pixels for the leakage check (reported with the check)


@dataclass
class TaskCheck:
    task: Task
    folder: Path | None  # None: not found under any of its names
    counts: dict[str, int | None] = field(default_factory=dict)  # split -> images listed; None: unusable
    classes_seen: int = 0
    problems: list[str] = field(default_factory=list)
    leaks: list[tuple[str, Path, Path]] = field(default_factory=list)  # (by path | by content, train side, test)
    train_paths: set = field(default_factory=set)  # images of the training roles (train, val, trainval)
    test_paths: set = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems


def split_names(suite: Suite) -> list[str]:
    """Every split file the suite's protocols read, in role order (train, val, trainval, test)."""
    return list(dict.fromkeys(s for role in ("train", "val", "trainval", "test") for s in suite.splits[role]))


def verify_image(path: Path) -> tuple[str | None, str | None]:
    """(None, pixel hash) when `run` would decode the file; else (what it would say, without the path; None)."""
    if not path.is_file():
        return "listed image not found", None
    try:
        im = open_rgb(path, draft=(1, 1))  # JPEG: decode at 1/8 scale; every block is still read
    except UserError as exc:
        return str(exc).removeprefix(f"{path}: "), None
    start = time.perf_counter()
    digest = hashlib.blake2b(f"{im.size}".encode() + im.tobytes(), digest_size=16).hexdigest()
    HASH_SECONDS.append(time.perf_counter() - start)
    return None, digest


def check_suite(suite: Suite, data_root: Path, tasks: list[Task] | None = None,
                workers: int | None = None) -> list[TaskCheck]:
    """List every split of every task, then open every listed image once, in a thread pool; then leakage."""
    checks, owners = [], {}
    for task in tasks or suite.tasks:
        check, paths = list_task(suite, data_root, task)
        checks.append(check)
        for path in paths:
            owners.setdefault(path, check)
    if owners:
        print(f"checking {len(owners):,} images under {data_root} ...", file=sys.stderr, flush=True)
    digests, start = {}, time.perf_counter()
    HASH_SECONDS.clear()
    with ThreadPoolExecutor(max_workers=workers or min(32, 4 * (os.cpu_count() or 1))) as pool:
        for path, (why, digest) in zip(owners, pool.map(verify_image, owners)):
            if why:
                owners[path].problems.append(f"{path}: {why}")
            digests[path] = digest
    if owners:
        print(f"checked {len(owners):,} images in {time.perf_counter() - start:.1f} s; the leakage check's pixel "
              f"hashes took {sum(HASH_SECONDS):.2f} s of thread time", file=sys.stderr, flush=True)
    for check in checks:
        check.leaks = leakage(check.train_paths, check.test_paths, digests)
    return checks


def leakage(train: set[Path], test: set[Path], digests: dict[Path, str | None]) -> list[tuple[str, Path, Path]]:
    """Test images that a training split also lists (same path) or holds under another name (same pixels)."""
    leaks = [("by path", path, path) for path in sorted(train & test)]
    by_digest = {}
    for path in sorted(train - test):
        if digests.get(path):
            by_digest.setdefault(digests[path], path)
    leaks += [("by content", by_digest[digests[path]], path) for path in sorted(test - train)
              if digests.get(path) in by_digest]
    return leaks


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
        (check.test_paths if split in suite.splits["test"] else check.train_paths).update(p for p, _ in items)
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
    leaky = [c for c in checks if c.leaks]
    if leaky:
        lines += ["", "leakage (training images also in the test split):"]
        for c in leaky:
            kinds = {k: sum(1 for kind, _, _ in c.leaks if kind == k) for k in ("by path", "by content")}
            lines.append(f"  {c.task.name}: {len(c.leaks)} test image(s) also in training splits "
                         f"({kinds['by path']} by path, {kinds['by content']} by content)")
            lines += [f"    {kind}: {train}" + ("" if train == test else f" = {test}")
                      for kind, train, test in c.leaks[:SHOWN]]
    lines += ["", f"{len(checks) - len(bad)} of {len(checks)} tasks ok" +
              (f"; with problems: {', '.join(c.task.name for c in bad)}" if bad else "") +
              (f"; leakage in {', '.join(c.task.name for c in leaky)}" if leaky else "; no train/test leakage")]
    return "\n".join(lines)


def run_check(suite: str | Suite, data_root: str | Path | None, tasks: list[str] | None = None,
              strict: bool = False) -> int:
    """Print the report; 0 when every task is complete and readable (and, with `strict`, has no train/test
    leakage), 1 otherwise."""
    from petlbench.plan import resolve_data_root

    the_suite = suite if isinstance(suite, Suite) else load_suite(suite)
    selected = the_suite.select(tasks)
    root = resolve_data_root(the_suite, str(data_root) if data_root is not None else None)
    if not root.is_dir():
        raise UserError(f"data root {root}: folder not found (from --data-root or $PETLBENCH_DATA_ROOT)")
    checks = check_suite(the_suite, root, selected)
    print(render(checks, the_suite, root))
    leaky = [c.task.name for c in checks if c.leaks]
    if leaky:
        print(f"petlbench: {'error' if strict else 'warning'}: train/test leakage in {', '.join(leaky)}"
              + ("" if strict else " (--strict makes it an error)"), file=sys.stderr)
    return 0 if all(c.ok for c in checks) and not (strict and leaky) else 1
