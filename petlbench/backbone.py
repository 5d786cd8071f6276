"""Backbones: any timm model by name, with local weights or timm's pretrained ones, and the
preprocessing (input size, mean/std, interpolation) that goes with them."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from petlbench import clip
from petlbench.clip import is_clip
from petlbench.errors import UserError
from petlbench.statefiles import read_state_dict  # noqa: F401 -- re-exported: callers read weights from here


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
        if self.pretrained and self.name.startswith("clip:"):
            return f"open_clip-pretrained:{self.args.get('pretrained')}"
        return "timm-pretrained" if self.pretrained else "random-init"


HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")  # timm loads these itself; no registry name to check


def check_model_name(name: str) -> None:
    """An unknown name or pretrained tag is refused before anything is built or fetched, with close names."""
    if not isinstance(name, str) or not name:
        raise UserError(f"backbone: expected a timm model name, got {name!r}")
    if is_clip(name):
        clip.architecture(name)
        return
    if name.startswith(HUB_PREFIXES):
        return
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(name, timm.list_models() + (timm.list_pretrained() if tag else []), n=3)
        raise UserError(f"backbone {name!r}: the model name is unknown to timm"
                        + (f"; close names: {', '.join(close)}" if close else "; `timm.list_models()` lists them"))
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        close = difflib.get_close_matches(name, timm.list_pretrained(f"{arch}.*"), n=3, cutoff=0.5)
        raise UserError(f"backbone {name!r}: timm has no pretrained tag {tag!r} for {arch}"
                        + (f"; close names: {', '.join(close)}" if close else ""))


def create_backbone(spec: BackboneSpec, num_classes: int, classnames: list[str] | None = None,
                    templates: list[str] | None = None) -> nn.Module:
    """A timm model with a fresh `num_classes` head and the weights the spec asks for; a CLIP backbone's image
    tower (petlbench.clip), whose zero-shot head starts from the class names and templates."""
    check_model_name(spec.name)
    if is_clip(spec.name):
        return clip.create(spec, num_classes, classnames, templates)
    fetch = spec.pretrained and not spec.checkpoint
    try:
        model = timm.create_model(spec.name, pretrained=fetch, num_classes=num_classes, **spec.args)
    except (RuntimeError, OSError) as exc:
        fetching_failed = fetch and (isinstance(exc, OSError) or "pretrained" in str(exc).lower())
        if not fetching_failed:  # e.g. a shape that does not work out
            raise UserError(bad_args_message(spec, exc)) from None
        raise UserError(
            f"backbone {spec.name!r}: could not fetch pretrained weights ({type(exc).__name__}); "
            "pass --checkpoint PATH for local weights or --random-init") from None
    except (TypeError, ValueError, AssertionError, ArithmeticError) as exc:  # timm fails deep inside on bad args
        raise UserError(bad_args_message(spec, exc)) from None
    if spec.checkpoint:
        load_checkpoint(model, Path(spec.checkpoint).expanduser())
    return model


def bad_args_message(spec: BackboneSpec, exc: Exception) -> str:
    """Name the argument timm tripped over: one of the wrong type, or one the model does not take."""
    try:
        with torch.device("meta"):  # the model's class, built without the user's args: no memory, no weights
            cls = type(timm.create_model(spec.name, pretrained=False))
        params = inspect.signature(cls.__init__).parameters
    except Exception:  # noqa: BLE001 -- diagnosis only; fall back to timm's own words
        cls, params = None, {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in spec.args.items():
        if key not in params:
            if cls is not None and not takes_any:
                valid = ", ".join(k for k in params if k not in ("self", "num_classes"))
                return f"--backbone-args: {cls.__name__} has no argument {key!r}; valid: {valid}"
            continue
        default = params[key].default
        expected = next((t for t in (bool, int, float) if type(default) is t), None)
        fits = (expected is None or type(value) is expected or (expected is float and type(value) is int)
                or isinstance(value, (list, tuple)))  # sizes may be pairs; never blame what may be right
        if not fits:
            return (f"--backbone-args: {key!r} of {spec.name} expects {expected.__name__} "
                    f"(default {default!r}), got {value!r}")
    shown = ",".join(f"{k}={v}" for k, v in spec.args.items())
    return (f"--backbone-args: timm cannot build {spec.name!r} with {shown or 'its defaults'} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no message'})")


def meta_model(spec: BackboneSpec, num_classes: int) -> nn.Module:
    """The backbone's architecture on the meta device: no weights, no memory, nothing fetched."""
    with torch.device("meta"):
        return create_backbone(dataclasses.replace(spec, pretrained=False, checkpoint=None), num_classes)


def check_backbone(spec: BackboneSpec) -> str | None:
    """Bad input about the backbone (name, args, a checkpoint that does not fit) before any run starts;
    returns the backbone's anatomy family (None: no family reads it)."""
    from petlbench.backbones import family_of
    if is_clip(spec.name):
        clip.check(spec)
    model = meta_model(spec, num_classes=2)
    if spec.checkpoint and not is_clip(spec.name):
        fitting_state(model, Path(spec.checkpoint).expanduser())
    return family_of(model)


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load backbone weights; the classifier head of the checkpoint is dropped (the task has its own)."""
    model.load_state_dict(fitting_state(model, path), strict=False)


def fitting_state(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors without the head, checked against the model's keys and shapes."""
    state = read_state_dict(path)
    head = model.get_classifier()
    head_keys = {name for name, p in model.named_parameters() if any(p is q for q in head.parameters())}
    own = model.state_dict()
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")  # timm's name for it, e.g. "head"
    if isinstance(classifier, str):  # a model built without a head (num_classes=0: a side tower) drops the file's
        head_keys |= {k for k in state if k not in own and k.startswith(classifier + ".")}
    state = {k: v for k, v in state.items() if k not in head_keys}
    missing = [k for k in own if k not in state and k not in head_keys]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape {wrong[0]}")
        raise UserError(f"--checkpoint {path}: does not fit {type(model).__name__} ({what}); check --backbone-args")
    return state


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preprocessing(model: nn.Module, spec: BackboneSpec, crop_pct: float = 1.0, train_augment: str = "none",
                  eval_crop: str = "none", side: int | None = None) -> dict[str, Any]:
    """Everything that turns a file into the model's input, for the loader and the record.

    Input size, mean/std and interpolation come from the model's pretrained config unless the spec
    (suite, recipe or command line) overrides them; crop and augmentation from the suite; `side` (the suite's
    `preprocessing.input_size`) sets the input of a model that takes any size (ConvNets).
    """
    cfg = timm.data.resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # set by img_size=..., beats the
    input_size = [3, *size] if size else list(cfg["input_size"])  # pretrained config's 224
    if side is not None:
        if size and tuple(size) != (side, side):
            raise UserError(f"preprocessing.input_size {side}: {spec.name} is built for {size[0]}x{size[1]} inputs; "
                            f"set its img_size={side} in the backbone's args instead")
        input_size = [3, side, side]
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
