"""`--device`: checked when it is parsed, so a missing GPU is one line before any work, not a CUDA
traceback minutes into a sweep."""
from __future__ import annotations

import torch

from petlbench.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA if present, else the CPU; cpu; cuda or cuda:N on a machine that has that GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r} (petlbench trains on CPU or CUDA)")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {name}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                        f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return device
