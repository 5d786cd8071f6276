"""Reading a weights file safely: safetensors, or torch.load(weights_only=True); one line for every bad file."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from petlbench.errors import UserError


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message runs to a page; the cause is what the file holds
        raise UserError(f"--checkpoint {path}: holds pickled objects that torch.load(weights_only=True) refuses; "
                        "expected a state dict of tensors (torch.save(model.state_dict(), ...)) or .safetensors"
                        ) from None
    except Exception as exc:  # corrupt or foreign file: one line, not a traceback
        first = str(exc).splitlines()[0][:160] if str(exc) else "no message"
        raise UserError(f"--checkpoint {path}: cannot read weights ({type(exc).__name__}: {first})") from None
    for key in ("state_dict", "model", "module"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"--checkpoint {path}: expected a state dict of tensors, got {type(state).__name__}")
    for key, value in state.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise UserError(f"--checkpoint {path}: expected a state dict of tensors, but key {key!r} holds "
                            f"{type(value).__name__}")
    return state
