"""Class names read from the user's own data, for tasks whose names ship with the dataset rather than with petlbench.

A suite task says where with `classnames_from:` (petlbench.classnames.FROM_DATA); the names are read once the data
root is known (`run`, `data check`, `bench`) and replace any the suite gives, so a CLIP run uses the names its
dataset's own files hold:

- `classes.txt` (FGVC layout; NABirds, CUB): `<class id> <name>` a line, the ids the split files use. Label i is
  the i-th id of the split files sorted (petlbench.data.layouts.fgvc_class_ids), so label i's name is that id's.
  NABirds' ids are sparse (555 leaf classes of 1011 ids; VPT's split files keep them); when `hierarchy.txt`
  (`<child id> <parent id>`) lies beside it, an id of the split files that is a parent is refused: such split files
  number their classes 0..C-1 themselves and the file's names would be other classes'.
- `split_zhou` (coop layout): CoOp's split_zhou_<Name>.json holds `[path, label, class name]` triples: the names
  CoOp's published numbers were computed with (its `lab2cname`). FGVCAircraft's variants.txt serves as its names.

A task whose data is not there keeps its suite names (or none) and says why in `classnames_source`; a file that is
there but wrong is a UserError naming it.
"""
from __future__ import annotations

from pathlib import Path

from petlbench.data.layouts import coop_entries, coop_file, fgvc_class_ids, find_task_dir, read_text
from petlbench.errors import UserError
from petlbench.specs import Task


def resolve(suite, data_root: Path) -> None:
    """Every task of `suite` with `classnames_from:` gets the names its data holds (in place), where present."""
    for task in suite.tasks:
        if task.classnames_from:
            task_dir = find_task_dir(data_root, task)
            names, source = read_names(task, task_dir, suite.split_names())
            if names:
                task.classnames, task.classnames_source = names, source
            elif not task.classnames:
                task.classnames_source = source


def read_names(task: Task, task_dir: Path, split_names: list[str]) -> tuple[list[str], str]:
    """(names in label order, source); ([], why) when the data's file is not there."""
    if task.classnames_from == "classes.txt":
        path = task_dir / "classes.txt"
        if not path.is_file():
            return [], f"{path} not found (the dataset's own class list, `<id> <name>` a line)"
        return checked(fgvc_names(path, task, task_dir, split_names), path), f"{path} (the dataset's own class list)"
    path = coop_file(task_dir)
    if not path.is_file() and not (task_dir / "variants.txt").is_file():
        return [], f"{path} not found (CoOp's split file, whose entries name their class)"
    where = path if path.is_file() else task_dir / "variants.txt"
    return checked(coop_names(task, task_dir, where), where), f"{where} (the class names of CoOp's split file)"


def fgvc_names(path: Path, task: Task, task_dir: Path, split_names: list[str]) -> list[str]:
    """Label order: the split files' class ids sorted; each id's name from classes.txt."""
    names = id_lines(path, "name")
    ids = fgvc_class_ids(task_dir, task, split_names)
    parents = set(id_lines(task_dir / "hierarchy.txt", "parent id").values()) if (
        task_dir / "hierarchy.txt").is_file() else set()
    for cid in ids:
        if cid not in names:
            raise UserError(f"{path}: no line for class id {cid}, which the split files of task {task.name} use")
        if str(cid) in parents:
            raise UserError(f"{task_dir}: the split files use class id {cid}, a parent class in hierarchy.txt "
                            f"({names[cid]!r}); they must keep the dataset's own (leaf) class ids, as VPT's do")
    return [names[cid] for cid in sorted(ids, key=ids.get)]


def id_lines(path: Path, what: str) -> dict[int, str]:
    """`<int id> <rest>` a line (blank lines skipped), ids unique."""
    out = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        cid, _, rest = line.strip().partition(" ")
        if not cid.isascii() or not cid.isdigit() or not rest.strip():
            raise UserError(f"{path}:{n}: expected '<class id> <{what}>', got {line!r}")
        if int(cid) in out:
            raise UserError(f"{path}:{n}: class id {cid} listed twice")
        out[int(cid)] = " ".join(rest.split())
    return out


def coop_names(task: Task, task_dir: Path, where: Path) -> list[str]:
    """Each label's name as the split file's entries give it (train, val and test must agree)."""
    names: dict[int, str] = {}
    for split in ("train", "val", "test"):
        for rel, label, name in coop_entries(task_dir, split, task.classes):
            name = " ".join(name.split())
            if names.setdefault(label, name) != name:
                raise UserError(f"{where}: label {label} is named both {names[label]!r} and {name!r} ({split}: {rel})")
    missing = [i for i in range(task.classes) if i not in names]
    if missing:
        raise UserError(f"{where}: no entry names label {missing[0]} (task {task.name} has {task.classes} classes)")
    return [names[i] for i in range(task.classes)]


def checked(names: list[str], where: Path) -> list[str]:
    """Names as CLIP's tokenizer sees them must be distinct and non-empty (petlbench.classnames' rule)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name or name.casefold() in seen:
            raise UserError(f"{where}: label {i}'s class name {name!r} is empty or the same as label "
                            f"{seen.get(name.casefold())}'s (case ignored, as CLIP's tokenizer lowercases)")
        seen[name.casefold()] = i
    return names
