"""Backbones: any timm model by name, with local weights or timm's pretrained ones, and the
preprocessing (input size, mean/std, interpolation) that goes with them."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from petlbench.errors import UserError


@dataclass
class BackboneSpec:
    name: str
    args: dict[str, Any] = field(default_factory=dict)  # architecture kwargs for timm.create_model
    checkpoint: str | None = None  # local weights (.safetensors, or a torch file loaded weights_only)
    pretrained: bool = True  # fetch timm's pretrained weights when no checkpoint is given
    mean: tuple[float, ...] | None = None  # override the model's pretrained config
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    checkpoint_sha256: str | None = None  # identifies local weights wherever the file lives

    @property
    def weights(self) -> str:
        """What the weights are, for run identity and tables: the checkpoint's content, not its path."""
        if self.checkpoint:
            return f"checkpoint sha256:{self.checkpoint_sha256[:16]}" if self.checkpoint_sha256 else "checkpoint"
        return "timm-pretrained" if self.pretrained else "random-init"


def create_backbone(spec: BackboneSpec, num_classes: int) -> nn.Module:
    """A timm model with a fresh `num_classes` head and the weights the spec asks for."""
    fetch = spec.pretrained and not spec.checkpoint
    try:
        model = timm.create_model(spec.name, pretrained=fetch, num_classes=num_classes, **spec.args)
    except (RuntimeError, OSError) as exc:
        if fetch:
            raise UserError(
                f"backbone {spec.name!r}: could not fetch pretrained weights ({type(exc).__name__}); "
                "pass --checkpoint PATH for local weights or --random-init") from None
        raise UserError(f"backbone {spec.name!r}: {exc}") from None
    except TypeError as exc:
        raise UserError(f"--backbone-args for {spec.name!r}: {exc}") from None
    if spec.checkpoint:
        load_checkpoint(model, Path(spec.checkpoint).expanduser())
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: one line, not a traceback
        raise UserError(f"--checkpoint {path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "module"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"--checkpoint {path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load backbone weights; the classifier head of the checkpoint is dropped (the task has its own)."""
    state = read_state_dict(path)
    head = model.get_classifier()
    head_keys = {name for name, p in model.named_parameters() if any(p is q for q in head.parameters())}
    state = {k: v for k, v in state.items() if k not in head_keys}
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in head_keys]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape {wrong[0]}")
        raise UserError(f"--checkpoint {path}: does not fit {type(model).__name__} ({what}); check --backbone-args")
    model.load_state_dict(state, strict=False)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preprocessing(model: nn.Module, spec: BackboneSpec, crop_pct: float = 1.0, train_augment: str = "none",
                  eval_crop: str = "none") -> dict[str, Any]:
    """Everything that turns a file into the model's input, for the loader and the record.

    Input size, mean/std and interpolation come from the model's pretrained config unless the spec
    (suite, recipe or command line) overrides them; crop and augmentation from the suite.
    """
    cfg = timm.data.resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # set by img_size=..., beats the
    input_size = [3, *size] if size else list(cfg["input_size"])  # pretrained config's 224
    cropping = crop_pct < 1.0
    return {
        "input_size": input_size,
        "mean": list(spec.mean or cfg["mean"]),
        "std": list(spec.std or cfg["std"]),
        "interpolation": spec.interpolation or "bicubic",
        "crop_pct": crop_pct,
        "resize": "shorter side to input/crop_pct, centre square" if cropping else "straight to the input size",
        "train_augment": train_augment,
        "eval_crop": eval_crop if cropping else "none",
        "decode": "once per split, uint8, kept in the on-disk cache",
    }
