"""Per-task weights, the point of PETL: only the tensors that define a trained task (what trained, the
buffers the method owns, the head), as safetensors beside the run's record. A few hundred kilobytes per
task instead of the whole backbone; the record holds the file's size.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from petlbench.errors import UserError
from petlbench.records import current_umask


def weights_path(record_path: Path) -> Path:
    return record_path.with_suffix(".safetensors")


def save_task(model: nn.Module, keys: list[str], path: Path) -> dict:
    """Write the task's tensors atomically (temp file + rename, the umask's mode); what the record says of them."""
    state = model.state_dict()
    tensors = {key: state[key].detach().to("cpu").contiguous() for key in keys}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "petlbench task weights"})
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"file": path.name, "bytes": path.stat().st_size, "tensors": len(tensors),
            "parameters": int(sum(t.numel() for t in tensors.values()))}


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
