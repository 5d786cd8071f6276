"""Run records: one JSON file per run, written atomically, with everything needed to reproduce it."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator

SCHEMA = 2  # 2: run_id = config id + data id (records of schema 1 lack the data's identity)
PACKAGES = ("petlbench", "torch", "torchvision", "timm", "peft", "numpy", "pillow")


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Readers see the old record or the whole new one, never half."""
    with replaced_whole(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def replaced_whole(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """The one way petlbench writes a file: yield a temporary path in the same folder, given the umask's mode (not
    mkstemp's or safetensors' 0600, so a shared results folder stays readable) and renamed over `path` when the
    block ends well, removed when it does not; errors pass through as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # after the writer: some (safetensors) make the file anew
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None when there is none or the file is not a record of this petlbench."""
    try:
        return parse_record(path)
    except (OSError, ValueError):
        return None


def parse_record(path: Path) -> dict[str, Any] | None:
    """The record, None for petlbench's other JSON (selection files); ValueError naming what is wrong."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(record, dict) and record.get("kind") in ("selection", "source"):  # source: a transfer's source run
        return None
    if not isinstance(record, dict) or "run_id" not in record or "schema" not in record:
        raise ValueError("not a petlbench run record")
    if record["schema"] != SCHEMA:
        raise ValueError(f"a record of schema {record['schema']!r}, this petlbench reads {SCHEMA}; "
                         "run the command again to make a new one")
    wrong = structure_problem(record)
    if wrong:
        raise ValueError(f"a damaged run record: {wrong}")
    return record


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_curve(value: Any) -> bool:
    """[[epoch, top-1], ...] as `fit` records it with eval_every."""
    return isinstance(value, list) and all(isinstance(point, list) and len(point) == 2 and is_int(point[0])
                                           and is_number(point[1]) for point in value)


# (key path, what it must be, its check): what the readers of records (table, plot, status, eval, ...) rely on.
ALWAYS = ((("run_id",), "a string", lambda v: isinstance(v, str)),
          (("status",), "a string", lambda v: isinstance(v, str)),
          (("suite",), "a string", lambda v: isinstance(v, str)),
          (("task",), "a string", lambda v: isinstance(v, str)),
          (("seed",), "an integer", is_int),
          (("method",), "a mapping", lambda v: isinstance(v, dict)),
          (("method", "name"), "a string", lambda v: isinstance(v, str)),
          (("method", "label"), "a string", lambda v: isinstance(v, str)))
WHEN_PRESENT = ((("error",), "a string or null", lambda v: v is None or isinstance(v, str)),
                (("config_id",), "a string", lambda v: isinstance(v, str)),
                (("finished_at",), "a string", lambda v: isinstance(v, str)),
                (("task_index",), "an integer", is_int),
                (("task_group",), "a string", lambda v: isinstance(v, str)),
                (("suite_file",), "a string", lambda v: isinstance(v, str)),
                (("method", "options"), "a mapping", lambda v: isinstance(v, dict)),
                (("protocol",), "a mapping", lambda v: isinstance(v, dict)),
                (("protocol", "stage"), "a string", lambda v: isinstance(v, str)),
                (("backbone",), "a mapping", lambda v: isinstance(v, dict)),
                (("backbone", "name"), "a string", lambda v: isinstance(v, str)),
                (("backbone", "weights"), "a string", lambda v: isinstance(v, str)),
                (("data",), "a mapping", lambda v: isinstance(v, dict)),
                (("data", "split_files_sha256"), "a mapping", lambda v: isinstance(v, dict)),
                (("data", "build"), "a string", lambda v: isinstance(v, str)),
                (("params",), "a mapping", lambda v: isinstance(v, dict)),
                (("params", "trainable_excl_head"), "an integer", is_int),
                (("params", "backbone"), "an integer", is_int),
                (("weights",), "a mapping", lambda v: isinstance(v, dict)),
                (("weights", "bytes"), "an integer", is_int),
                (("metrics",), "a mapping", lambda v: isinstance(v, dict)),
                (("metrics", "test_top1"), "a number", is_number),
                (("metrics", "val_top1"), "a number", is_number),
                (("metrics", "test_curve"), "a list of [epoch, top-1] pairs", is_curve),
                (("metrics", "val_curve"), "a list of [epoch, top-1] pairs", is_curve))
MISSING = object()


def lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def structure_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a record's keys and types (checked once, when it is read), or None. A success must
    hold its metric; every key the readers use must have the type they expect, wherever it is present."""
    required = ALWAYS
    if record.get("status") == "success":
        stage = record.get("protocol", {}).get("stage") if isinstance(record.get("protocol"), dict) else None
        metric = "val_top1" if stage == "search" else "test_top1"
        required += ((("metrics",), "a mapping", lambda v: isinstance(v, dict)),
                     (("metrics", metric), "a number (a successful run's result)", is_number))
    for path, expected, ok in required:
        value = lookup(record, path)
        if value is MISSING:
            return f"the key {'.'.join(path)} is missing (expected {expected})"
        if not ok(value):
            return f"the key {'.'.join(path)} is {value!r:.60}, expected {expected}"
    for path, expected, ok in WHEN_PRESENT:
        value = lookup(record, path)
        if value is not MISSING and not ok(value):
            return f"the key {'.'.join(path)} is {value!r:.60}, expected {expected}"
    return None


def is_finished(record: dict[str, Any] | None, metric: str) -> bool:
    """A successful record that holds its metric: only such a record lets `run` skip the run."""
    return (isinstance(record, dict) and record.get("status") == "success"
            and isinstance(record.get("metrics"), dict) and isinstance(record["metrics"].get(metric), (int, float)))


def load_records(root: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every record under `root` (recursively). A JSON file that is not a readable record is skipped,
    and `warn` (if given) hears its name and why."""
    return [record for _, record in record_files(root, warn)]


def record_files(root: str | Path, warn: Callable[[str], None] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(path, record) of every record under `root`, as load_records reads them."""
    root = Path(root)
    found = []
    for path in [root] if root.is_file() else sorted(root.rglob("*.json")):
        try:
            record = parse_record(path)
        except (OSError, ValueError) as exc:
            if warn is not None:
                warn(f"{path}: skipped, {exc.strerror if isinstance(exc, OSError) else exc}")
            continue
        if record is not None:
            found.append((path, record))
    return found


TABLE_FIELDS = (("suite",), ("task",), ("seed",), ("method", "name"), ("method", "label"), ("backbone", "name"),
                ("backbone", "weights"), ("params", "trainable_excl_head"), ("params", "backbone"))


def lacks(record: dict[str, Any]) -> str | None:
    """What a successful record lacks that tables need (its metric, its params, ...), or None."""
    if not is_finished(record, metric_of(record)):
        return f"its metric {metric_of(record)}"
    for path in TABLE_FIELDS:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return f"the key {'.'.join(path)}"
    return None


def metric_of(record: dict[str, Any]) -> str:
    return "val_top1" if (record.get("protocol") or {}).get("stage") == "search" else "test_top1"


def recency(record: dict[str, Any]) -> str:
    """When a `run` last used the record: it finished, or a later `run` found it done and skipped
    (`confirmed_at`, stamped when the data had changed in between and changed back)."""
    return max(str(record.get("finished_at") or ""), str(record.get("confirmed_at") or ""))


def current(records: list[dict[str, Any]], warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """What a table shows: per config, the successful record the last `run` of it used (finished or confirmed;
    older ones ran on data that changed since); failed records only for configs that never succeeded; a
    "success" without its metric is skipped."""
    newest: dict[str, dict[str, Any]] = {}
    failed, superseded = [], 0
    for r in records:
        key = str(r.get("config_id") or r.get("run_id"))
        lacking = lacks(r) if r.get("status") == "success" else None
        if lacking:
            if warn is not None:
                warn(f"record {r.get('run_id')} ({r.get('suite')}/{r.get('task')}): marked success but lacks "
                     f"{lacking}; skipped")
        elif r.get("status") == "success":
            if key in newest:
                superseded += 1
            if key not in newest or recency(r) > recency(newest[key]):
                newest[key] = r
        else:
            failed.append((key, r))
    if superseded and warn is not None:
        warn(f"{superseded} older record(s) of the same configurations are not shown (their data changed since, or "
             "their weights were replaced); the one each last run used is")
    return list(newest.values()) + [r for key, r in failed if key not in newest]


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The petlbench checkout's commit (with '+dirty' for local changes), when run from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_description(device) -> dict[str, Any]:
    import torch
    info = {"type": device.type, "host": platform.node(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info
