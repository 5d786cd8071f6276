"""Per-task weights, the point of PETL: only the tensors that define a trained task (what trained, the
buffers the method owns, the head), as safetensors beside the run's record. A few hundred kilobytes per
task instead of the whole backbone; the record holds the file's size and sha256, so a file deleted,
damaged or edited since the run is found before it is used (or before `run` counts the run as done).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from petlbench.backbone import file_sha256
from petlbench.errors import UserError
from petlbench.records import replaced_whole


def weights_path(record_path: Path) -> Path:
    return record_path.with_suffix(".safetensors")


def save_task(model: nn.Module, keys: list[str], path: Path) -> dict:
    """Write the task's tensors; what the record says of them (sha256 included, checked before every use)."""
    state = model.state_dict()
    tensors = {key: state[key].detach().to("cpu").contiguous() for key in keys}
    sha256 = write_safetensors(tensors, path, {"format": "petlbench task weights"})
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256, "tensors": len(tensors),
            "parameters": int(sum(t.numel() for t in tensors.values()))}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Temp file + rename (never half a file at `path`), with the umask's mode (safetensors alone makes 0600,
    unreadable in a shared folder); the file's sha256. Fails with safetensors' own error on a full disk."""
    with replaced_whole(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        sha256 = file_sha256(tmp)
    return sha256


def weights_problem(record: dict, record_path: Path) -> str | None:
    """Why the task weights beside a record are not the ones its run saved: lost, missing, changed (one line
    naming the file); None when they are, or when the run kept none (--no-weights, a tuning run)."""
    saved = record.get("weights")
    if not isinstance(saved, dict):
        return None
    path = weights_path(record_path)
    lost = saved.get("lost") or saved.get("error")
    if lost:
        return f"{path}: task weights lost when the run saved them ({lost})"
    if not path.is_file():
        return f"{path}: task weights missing (deleted or moved since the run)"
    if saved.get("sha256"):
        if file_sha256(path) != saved["sha256"]:
            return f"{path}: task weights changed since the run (sha256 differs from the record's)"
    elif saved.get("bytes") is not None and path.stat().st_size != saved["bytes"]:  # records before the sha256
        return f"{path}: task weights changed since the run (size differs from the record's)"
    return None


def load_task(model: nn.Module, path: Path, keys: list[str]) -> None:
    """Load a task's tensors into a freshly built model of the same method; the names must be exactly its task's."""
    if not path.is_file():
        raise UserError(f"{path}: task weights not found (was the run made with --no-weights?)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path}: cannot read task weights ({type(exc).__name__}: {exc})") from None
    missing, unexpected = sorted(set(keys) - set(tensors)), sorted(set(tensors) - set(keys))
    if missing or unexpected:
        what = f"lacks {missing[:3]}" if missing else f"holds tensors the method does not have: {unexpected[:3]}"
        raise UserError(f"{path}: does not fit the rebuilt model ({what})")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{path}: does not fit the rebuilt model ({str(exc).splitlines()[-1].strip()})") from None


@torch.no_grad()
def same_architecture(model: nn.Module, reference: nn.Module) -> str | None:
    """None when both state dicts have the same keys and shapes; else the first difference."""
    mine, theirs = model.state_dict(), reference.state_dict()
    for key in sorted(set(mine) | set(theirs)):
        if key not in mine or key not in theirs:
            return f"{key} is {'missing' if key not in mine else 'extra'}"
        if mine[key].shape != theirs[key].shape:
            return f"{key} has shape {tuple(mine[key].shape)}, the backbone {tuple(theirs[key].shape)}"
    return None
