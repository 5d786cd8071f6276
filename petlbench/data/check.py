"""`petlbench data check`: is a data root complete and readable for a suite, before hours of runs find out?

Per task: the folder (under its name or an alias), the images listed per split of the suite's
protocol roles, classes seen vs expected, and every problem with the exact file: a missing folder
or split file, a bad line or label, an image listed twice in a split, a path leaving the task folder,
a missing or undecodable image. Images go through the decode `run` uses (`data.open_rgb`), so data
check refuses what a run would. Problems are collected, not raised, so one pass shows all of them. Per task
also its data build (petlbench.data.build) and split sanity warnings (petlbench.data.sanity).

Leakage: an image of a training split (train, val, trainval) that is also in the test split, by path or by
content (the same decoded pixels under another name or in another format), is reported as a warning, an error
with --strict. Pixels are hashed from the decode the check does anyway: full for PNGs and other formats, 1/8
scale for JPEGs (its block means: it proposes a match, never makes one). JPEGs are decoded in full only where a
match is possible: a draft equal to one on the other side, or a non-JPEG of the same size there (a JPEG saved
losslessly as PNG). So the check costs little more than reading every image once.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from petlbench.classnames import names_report
from petlbench.data import datanames, multilabel
from petlbench.data.build import Build, identify
from petlbench.data.decode import open_image, open_rgb
from petlbench.errors import UserError
from petlbench.data.layouts import find_task_dir, list_images, split_duplicates
from petlbench.data.sanity import split_warnings
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
    labels: dict[str, list[int]] = field(default_factory=dict)  # split -> its labels (readable splits only)
    build: Build | None = None  # petlbench.data.build: noah-jpeg, tfds-png or unknown, and why
    warnings: list[str] = field(default_factory=list)  # split sanity (petlbench.data.sanity)

    @property
    def ok(self) -> bool:
        return not self.problems


def split_names(suite: Suite) -> list[str]:
    """Every split file the suite's protocols read, in role order (train, val, trainval, test)."""
    return suite.split_names()


@dataclass(frozen=True)
class Pixels:
    """An image's pixel hash as the check's decode gave it, and whether that decode was a JPEG draft."""
    digest: str
    size: tuple[int, int]  # the file's full (width, height)
    draft: bool  # hashed at reduced scale: equal drafts only propose a match


def verify_image(path: Path) -> tuple[str | None, Pixels | None]:
    """(None, its pixel hash) when `run` would decode the file; else (what it would say, without the path; None)."""
    if not path.is_file():
        return "listed image not found", None
    try:
        opened = open_image(path, draft=(1, 1))  # JPEG: decode at 1/8 scale; every block is still read
    except UserError as exc:
        return str(exc).removeprefix(f"{path}: "), None
    return None, Pixels(pixel_digest(opened.image), opened.size, opened.image.size != opened.size)


def pixel_digest(im) -> str:
    start = time.perf_counter()
    digest = hashlib.blake2b(f"{im.size}".encode() + im.tobytes(), digest_size=16).hexdigest()
    HASH_SECONDS.append(time.perf_counter() - start)
    return digest


def full_digest(path: Path) -> str | None:
    """The hash of the full decode (a JPEG whose draft proposed a match); None if it cannot be read now."""
    try:
        return pixel_digest(open_rgb(path))
    except UserError:
        return None


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
    seen, start = {}, time.perf_counter()
    HASH_SECONDS.clear()
    with ThreadPoolExecutor(max_workers=workers or min(32, 4 * (os.cpu_count() or 1))) as pool:
        for path, (why, pixels) in zip(owners, pool.map(verify_image, owners)):
            if why:
                owners[path].problems.append(f"{path}: {why}")
            seen[path] = pixels
        confirm = sorted(set().union(*(to_confirm(c.train_paths, c.test_paths, seen) for c in checks)))
        full = dict(zip(confirm, pool.map(full_digest, confirm)))
    if owners:
        print(f"checked {len(owners):,} images in {time.perf_counter() - start:.1f} s; the leakage check's pixel "
              f"hashes took {sum(HASH_SECONDS):.2f} s of thread time ({len(confirm):,} JPEG(s) decoded in full to "
              f"confirm a match)", file=sys.stderr, flush=True)
    for check in checks:
        check.leaks = leakage(check.train_paths, check.test_paths, seen, full)
        check.build = identify(check.folder, suite.layout) if check.folder else None
        check.warnings = split_warnings(check.labels, suite.splits)
    return checks


def to_confirm(train: set[Path], test: set[Path], seen: dict[Path, Pixels | None]) -> set[Path]:
    """The JPEGs hashed from a draft that could match across train/test: an equal draft on the other side, or an
    image hashed in full (a PNG, ...) of the same size there. Only these are decoded in full."""
    sides = {"train": [p for p in train - test if seen.get(p)], "test": [p for p in test - train if seen.get(p)]}
    drafts = defaultdict(list)
    for path in sides["train"]:
        if seen[path].draft:
            drafts[seen[path].digest].append(path)
    need = set()
    for path in sides["test"]:
        if seen[path].draft and seen[path].digest in drafts:
            need.add(path)
            need.update(drafts[seen[path].digest])
    for side, other in (("train", "test"), ("test", "train")):
        exact_sizes = {seen[p].size for p in sides[other] if not seen[p].draft}
        need.update(p for p in sides[side] if seen[p].draft and seen[p].size in exact_sizes)
    return need


def leakage(train: set[Path], test: set[Path], seen: dict[Path, Pixels | None],
            full: dict[Path, str | None]) -> list[tuple[str, Path, Path]]:
    """Test images that a training split also lists (same path) or holds under another name (same pixels, by
    the hash of their full decode: a draft's hash alone never makes a match)."""
    def exact(path: Path) -> str | None:
        pixels = seen.get(path)
        return None if pixels is None else full.get(path) if pixels.draft else pixels.digest

    leaks = [("by path", path, path) for path in sorted(train & test)]
    by_digest = {}
    for path in sorted(train - test):
        if exact(path):
            by_digest.setdefault(exact(path), path)
    leaks += [("by content", by_digest[exact(path)], path) for path in sorted(test - train)
              if exact(path) in by_digest]
    return leaks


def list_task(suite: Suite, data_root: Path, task: Task) -> tuple[TaskCheck, list[Path]]:
    """The task's split counts and listing problems, and the images its splits name (each once)."""
    task_dir = find_task_dir(data_root, task)
    check = TaskCheck(task, task_dir if task_dir.is_dir() else None)
    labels, paths = set(), {}
    for split in split_names(suite):
        try:
            items = list_images(suite.layout, task_dir, task, split, suite.split_names())
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
        check.labels[split] = [c for _, label in items for c in multilabel.classes_of(label)]  # multi-hot: each class
        labels.update(check.labels[split])
        paths.update(dict.fromkeys(path for path, _ in items))
    check.classes_seen = len(labels)
    return check, list(paths)


def render(checks: list[TaskCheck], suite: Suite, data_root: Path) -> str:
    from tabulate import tabulate

    splits = split_names(suite)
    rows = [[c.task.name, c.folder.name if c.folder else "MISSING",
             *("-" if c.counts.get(s) is None else c.counts[s] for s in splits),
             f"{c.classes_seen}/{c.task.classes}", c.build.name if c.build else "-",
             "ok" if c.ok else f"{len(c.problems)} problem(s)"]
            for c in checks]
    lines = [f"suite {suite.name} ({suite.layout} layout), data root {data_root}", "",
             tabulate(rows, headers=["task", "folder", *splits, "classes seen/expected", "build", "status"],
                      tablefmt="github", disable_numparse=True)]
    why = {}  # reason -> tasks: the same reason (say, the fgvc layout) is said once
    for c in checks:
        if c.build and c.build.name == "unknown":
            why.setdefault(c.build.reason, []).append(c.task.name)
    if why:
        lines += ["", "build unknown (petlbench.data.build):"]
        lines += [f"  {', '.join(names) if len(names) < len(checks) else 'all tasks'}: {reason}"
                  for reason, names in why.items()]
    warned = [c for c in checks if c.warnings]
    if warned:
        lines += ["", "split sanity (warnings, not errors):"]
        lines += [f"  {c.task.name}: {w}" for c in warned for w in c.warnings]
    lines += names_report([c.task for c in checks])  # informs; a CLIP run refuses what it lists (not a data problem)
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
    datanames.resolve(the_suite, root)  # names from the data's own files (`classnames_from:`)
    checks = check_suite(the_suite, root, selected)
    print(render(checks, the_suite, root))
    warned = [c.task.name for c in checks if c.warnings]
    if warned:
        print(f"petlbench: warning: split sanity: {sum(len(c.warnings) for c in checks)} warning(s) in "
              f"{', '.join(warned)} (see above)", file=sys.stderr)
    leaky = [c.task.name for c in checks if c.leaks]
    if leaky:
        print(f"petlbench: {'error' if strict else 'warning'}: train/test leakage in {', '.join(leaky)}"
              + ("" if strict else " (--strict makes it an error)"), file=sys.stderr)
    return 0 if all(c.ok for c in checks) and not (strict and leaky) else 1
