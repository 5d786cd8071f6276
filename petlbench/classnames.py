"""Class names and prompt templates of a task: what a CLIP-style method turns into its text classifier.

A suite gives them per task (`classnames:`, `templates:`) or for every task (top-level `templates:`), each as a
list of strings or the path of a UTF-8 text file with one entry a line: relative to the suite file, or
`petlbench:<path>` inside petlbench's benchmarks folder, where the shipped lists are (so a copy of a packaged
suite keeps them). Blank lines and lines starting with `#` are skipped; `# source: ...` lines say where the list
comes from (the shipped files under benchmarks/classnames and benchmarks/templates carry theirs; SOURCES.md).

Names are checked on load for what would make two classes one text prompt: empty names and duplicates, compared
as CLIP's tokenizer sees them (case and runs of whitespace ignored). A count that differs from the task's
`classes:` is not a load error (a vision-only run does not read names); `petlbench data check` reports it and a
CLIP run refuses it through `check_classnames`.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path
from typing import Any

from petlbench.errors import UserError
from petlbench.specs import Task

PLACEHOLDER = "{}"
PACKAGED = "petlbench:"  # a path inside petlbench's benchmarks folder: the shipped lists, from any suite file
# what a run may use when a task has names but no templates (CLIP's plainest prompt); say so in its record
DEFAULT_TEMPLATES = ["a photo of a {}."]
# `classnames_from:` values: names read from the user's data once the data root is known (petlbench.data.datanames)
FROM_DATA = ("classes.txt", "split_zhou")


def read_entries(value: Any, where: str, key: str, what: str) -> tuple[list[str], str]:
    """(entries, source) from a YAML list of strings or a text file's path relative to the suite file `where`."""
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            bad = next(v for v in value if not isinstance(v, str))
            raise UserError(f"{where}: key '{key}' must be a list of {what} (strings), got {bad!r} in it")
        return [" ".join(v.split()) for v in value], f"{where}: key '{key}'"
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: key '{key}' must be a list of {what} or the path of a text file with one a line, "
                        f"got {value!r}")
    if PLACEHOLDER in value:
        raise UserError(f"{where}: key '{key}' is a path; write one template as a list: ['{value}']")
    if value.startswith(PACKAGED):
        path = Path(str(importlib.resources.files("petlbench.benchmarks"))) / value[len(PACKAGED):]
        if not path.is_file() or ".." in Path(value[len(PACKAGED):]).parts:
            raise UserError(f"{where}: key '{key}': {value!r} is not a file shipped with petlbench "
                            "(see benchmarks/classnames/SOURCES.md)")
    else:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else Path(where).parent / path
    if not path.is_file():
        raise UserError(f"{where}: key '{key}': file {path} not found (a path relative to the suite file, or "
                        f"{PACKAGED}<path> for a list shipped with petlbench)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: key '{key}': cannot read {path} as UTF-8 text ({exc})") from None
    entries, sources = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if stripped[1:].strip().lower().startswith("source:"):
                sources.append(stripped[1:].strip()[len("source:"):].strip())
        elif stripped:
            entries.append(" ".join(stripped.split()))
    return entries, "; ".join(sources) or str(path)


def _no_duplicates(entries: list[str], where: str, key: str, what: str) -> None:
    seen = {}
    for i, entry in enumerate(entries):
        folded = entry.casefold()
        if folded in seen:
            raise UserError(f"{where}: key '{key}' lists the {what} {entry!r} twice (entries {seen[folded] + 1} and "
                            f"{i + 1}; case is ignored, as CLIP's tokenizer lowercases)")
        seen[folded] = i


def parse_classnames(value: Any, where: str, key: str) -> tuple[list[str], str]:
    """The class names under `key`, in label order, and where they come from."""
    names, source = read_entries(value, where, key, "class names")
    if "" in names:
        raise UserError(f"{where}: key '{key}': class name {names.index('') + 1} is empty")
    if not names:
        raise UserError(f"{where}: key '{key}' holds no class name")
    _no_duplicates(names, where, key, "class name")
    return names, source


def parse_templates(value: Any, where: str, key: str) -> list[str]:
    """Prompt templates, each with exactly one `{}` where the class name goes."""
    templates, _ = read_entries(value, where, key, "prompt templates")
    if not templates:
        raise UserError(f"{where}: key '{key}' holds no template")
    for template in templates:
        if template.count(PLACEHOLDER) != 1 or "{" in template.replace(PLACEHOLDER, "") or "}" in template.replace(
                PLACEHOLDER, ""):
            raise UserError(f"{where}: key '{key}': template {template!r} must hold {PLACEHOLDER} exactly once where "
                            "the class name goes, and no other braces")
    _no_duplicates(templates, where, key, "template")
    return templates


def fill(template: str, name: str) -> str:
    """One prompt: the template with the class name in place of `{}`."""
    return template.replace(PLACEHOLDER, name)


def names_record(task: Task) -> dict[str, Any]:
    """What a CLIP run's record keeps of the text side: the names, templates, their source and one digest of both."""
    blob = json.dumps([task.classnames, task.templates], ensure_ascii=False).encode()
    return {"classnames": list(task.classnames), "templates": list(task.templates), "source": task.classnames_source,
            "sha256": hashlib.sha256(blob).hexdigest()}


def check_classnames(task: Task) -> None:
    """Refuse a task a CLIP-style run cannot classify by name: no names, or not one name per class."""
    if not task.classnames:
        raise UserError(f"task {task.name!r} has no class names; give them in the suite file as "
                        f"`classnames:` (a list, or a text file with one name a line) for its {task.classes} classes")
    if len(task.classnames) != task.classes:
        raise UserError(f"task {task.name!r}: {len(task.classnames)} class names for {task.classes} classes "
                        f"(names from {task.classnames_source or 'the suite file'}); one per class, in label order")


def names_report(tasks: list[Task]) -> list[str]:
    """`data check`'s lines on class names: matching tasks in one line, one line per task without or mismatched."""
    lines, ok = [], []
    for task in tasks:
        if not task.classnames:
            why = f" ({task.classnames_source})" if task.classnames_source else ""
            lines.append(f"  {task.name}: no class names{why}; CLIP-style methods refuse it (add `classnames:` to "
                         "the suite)")
        elif len(task.classnames) != task.classes:
            lines.append(f"  {task.name}: names {len(task.classnames)} vs classes {task.classes} (CLIP-style methods "
                         f"refuse it; names from {task.classnames_source or 'the suite file'})")
        else:
            ok.append(f"{task.name} ({task.classes}{'' if task.templates else ', no templates'})")
    if ok:
        lines.insert(0, f"  names match classes: {', '.join(ok)}")
    return ["", "class names (for CLIP-style methods):", *lines]


def task_names(task: Task, raw: dict, where: str, key: str) -> Task:
    """The task's own `classnames:`, `templates:` and `classnames_source:` keys (`key`: e.g. tasks[3]), checked."""
    if raw.get("classnames") is not None:
        task.classnames, task.classnames_source = parse_classnames(raw["classnames"], where, f"{key}.classnames")
    if raw.get("templates") is not None:
        task.templates = parse_templates(raw["templates"], where, f"{key}.templates")
    origin = raw.get("classnames_from")
    if origin is not None:
        if origin not in FROM_DATA:
            raise UserError(f"{where}: key '{key}.classnames_from' must be one of {', '.join(FROM_DATA)} (the data's own "
                            f"file the names are read from), got {origin!r}")
        task.classnames_from = origin
    source = raw.get("classnames_source")
    if source is not None:
        if not isinstance(source, str):
            raise UserError(f"{where}: key '{key}.classnames_source' must be a sentence (a string), got {source!r}")
        task.classnames_source = source
    return task


def task_subset(task: Task, value: Any, where: str, key: str) -> None:
    """A held-out domain's class folders (a list or a file of one a line, as class names are given): its images are
    scored among these of the training classes only (ImageNet-A/-R's 200 wnids); checked for blanks and repeats."""
    folders, source = read_entries(value, where, key, "class folder names")
    if not folders or "" in folders or len(set(folders)) != len(folders):
        raise UserError(f"{where}: key '{key}' must list distinct class folder names, one per class scored")
    if len(folders) > task.classes:
        raise UserError(f"{where}: key '{key}' lists {len(folders)} class folders, more than the task's {task.classes} "
                        "classes")
    task.class_subset, task.class_subset_source = folders, source


def suite_templates(tasks: list[Task], raw: dict, where: str) -> None:
    """The suite's top-level `templates:`, for every task that gives none of its own."""
    if raw.get("templates") is not None:
        templates = parse_templates(raw["templates"], where, "templates")
        for task in tasks:
            task.templates = task.templates or list(templates)
