"""Any Hugging Face peft tuner that adapts Linear layers, on the anatomy's q, k, v, o, fc1 and fc2 of every block.

`peft:type=ia3` trains the tuner with peft's own defaults; `peft:config=mine.yaml` reads the tuner's config kwargs
from YAML, the tuner named by its `peft_type` key. peft gets exact module names found by identity (petlbench.qkv,
which splits timm's fused qkv so q and v can be adapted alone); `inject_adapter_in_model` keeps the timm model
(`forward_features`, `get_classifier`) and leaves only the adapter's tensors trainable. The tuners' forward and
merge are peft's. Refused in one line: tuners that are not weight-space (prompt and prefix tuning feed virtual
tokens a timm model does not take: use vpt_deep), tuners peft injects only through `get_peft_model` (VeRA: its
random projections are state shared on the tuner), and AdaLoRA (its rank budget needs `update_and_allocate` after
every step, which the training loop does not call; without it AdaLoRA is LoRA in SVD form).
IA3 on fc2 scales fc2's input, the MLP's inner activation (IA3's l_ff); on any other Linear its output.

Weight decay: timm's rule, as lora (NOAH's LoRA recipe, timm's create_optimizer).
"""
from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import peft
from peft.tuners.lokr.layer import factorization
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.method import Method, refuse_above
from petlbench.options import finite, load_yaml
from petlbench.qkv import fuse_qkv, target_linears

# type -> (peft type, kwargs that define it). Each was checked to inject into a timm ViT, train and merge.
TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LORA", {}), "dora": ("LORA", {"use_dora": True}), "ia3": ("IA3", {}), "loha": ("LOHA", {}),
    "lokr": ("LOKR", {}), "boft": ("BOFT", {}), "oft": ("OFT", {}), "hra": ("HRA", {}), "fourierft": ("FOURIERFT", {}),
}
Target = Literal["q", "k", "v", "o", "fc1", "fc2"]
# config keys that pick modules by name: petlbench picks them (option `targets`), by identity
SELECTING = ("target_modules", "exclude_modules", "feedforward_modules", "modules_to_save", "layers_to_transform",
             "layers_pattern", "target_parameters", "rank_pattern", "alpha_pattern", "trainable_token_indices")
WHY_NOT = {
    "ADALORA": "its rank budget needs update_and_allocate() after every step, which petlbench's loop does not call",
    "LN_TUNING": "it tunes norm layers, not Linears (use the ln method)",
    "SHADOW": "peft's inject_adapter_in_model does not support it",
}


def peft_class(type_name: str, where: str) -> tuple[type, dict[str, Any]]:
    """The peft config class and defining kwargs of `type_name` (a TYPES key or a peft type); one line if refused."""
    peft_name, defining = TYPES.get(type_name.lower(), (type_name.upper(), {}))
    known = {t.value: t for t in peft.PeftType}
    if peft_name not in known:
        raise UserError(f"{where}: unknown peft type {type_name!r}; types: {', '.join(TYPES)}")
    config_cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING[known[peft_name]]
    tuner = peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(known[peft_name])
    if issubclass(config_cls, peft.PromptLearningConfig) or peft_name in ("ADAPTION_PROMPT", "CARTRIDGE"):
        why = "it feeds learned tokens to a language model's embeddings or attention cache (use vpt_deep)"
    elif tuner is None or getattr(tuner, "uses_shared_state", False):
        why = "peft injects it only through get_peft_model (state shared on the tuner)"
    else:
        why = WHY_NOT.get(peft_name, "" if type_name.lower() in TYPES else "petlbench has not checked it on vision "
                                                                         "models")
    if why:
        raise UserError(f"{where}: peft type {type_name!r} cannot adapt a timm model here: {why}; "
                        f"types: {', '.join(TYPES)}")
    return config_cls, defining


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def checked_kwargs(config_cls: type, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Refuse keys that select modules by name, keys the config does not have, values of another type than the
    config declares and non-finite numbers; build it once to check values (planning's meta build checks the rest)."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    try:
        declared = typing.get_type_hints(config_cls)
    except Exception:  # noqa: BLE001 -- an annotation typing cannot resolve: peft checks that value itself
        declared = {}
    for key, value in kwargs.items():
        if key in SELECTING:
            raise UserError(f"{where}: {key!r} selects modules by name; petlbench selects them (option targets)")
        if key not in fields:
            raise UserError(f"{where}: {config_cls.__name__} has no option {key!r}")
        if not finite(value):
            raise UserError(f"{where}: key {key!r} expects finite numbers, got {value!r}")
        if key in declared and not fits_type(value, declared[key]):
            raise UserError(f"{where}: key {key!r} expects {type_name(declared[key])}, got {value!r}")
    try:
        config_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: {config_cls.__name__}: {first_line(exc)}") from None
    return kwargs


def fits_type(value: Any, tp: Any) -> bool:
    """Does a YAML value fit a peft config field's annotation? Types this cannot read are left to peft."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):  # peft declares some scalars int (lora_alpha) and takes floats; sizes its build checks
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    return True


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + "|".join(map(repr, typing.get_args(tp)))
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def target_widths(model: nn.Module, targets: list[str], method: str) -> list[int]:
    """The input and output widths of every Linear the targets name, read from the anatomy (the model unchanged)."""
    widths = set()
    for block in anatomy(model, method).blocks:
        for target in targets:
            if target in ("q", "k", "v"):
                layer, out = block.qkv, block.qkv.out_features // 3 if block.qkv is not None else 0
            else:
                layer = {"o": block.attn_proj, "fc1": block.fc1, "fc2": block.fc2}[target]
                out = getattr(layer, "out_features", 0)
            if isinstance(layer, nn.Linear):  # a missing one is refused by target_linears
                widths |= {layer.in_features, out}
    return sorted(widths)


def refuse_unfit_factor(method: Method, option: str, factor: int, widths: list[int]) -> None:
    """LoKr splits a width w into factor x w/factor only when the factor divides w; otherwise peft silently takes
    another pair (factor 7 on width 96 trains 6 x 16): refused, so what trains is what the record says."""
    for width in widths:
        if width % factor:
            m, n = factorization(width, factor)
            raise UserError(f"method {method.name}: {option} is {factor}, which does not divide the width {width} it "
                            f"adapts (widths {', '.join(map(str, widths))}); peft's LoKr would silently factorise "
                            f"{width} as {m} x {n}")


def culprit(config_cls: type, kwargs: dict[str, Any], keys: list[str], shapes: set[tuple[int, int]]) -> str | None:
    """The key of a user's config that peft refuses on its own, the others at their defaults, tried on one meta
    Linear of each adapted shape (no weights, no memory); None when no single key is."""
    class Probe(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.layer = nn.Linear(*shape, device="meta")

    base = {k: v for k, v in kwargs.items() if k not in keys}
    for key in keys:
        for shape in sorted(shapes):
            try:
                config = config_cls(**base, **{key: kwargs[key]}, target_modules=["layer"])
            except (ValueError, TypeError):
                break  # the key needs another one to be valid at all: no verdict on it alone
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    peft.inject_adapter_in_model(config, Probe(shape))
            except (ValueError, TypeError):
                return key
    return None


def inject(model: nn.Module, config_cls: type, kwargs: dict[str, Any], targets: list[str], method: str,
           where: str | None = None, keys: list[str] = ()) -> nn.Module:
    """peft's tuner on exactly the targeted Linears of every block; only the adapter's tensors train. A refusal by
    peft names `where` (a config file) and the key among `keys` (the file's) that peft refuses."""
    names = target_linears(model, targets, method)
    chosen = {"target_modules": list(names)}
    if config_cls is peft.IA3Config:
        chosen["feedforward_modules"] = [name for name, target in names.items() if target == "fc2"]
    modules = dict(model.named_modules())
    shapes = {(modules[name].in_features, modules[name].out_features) for name in names}
    try:
        model = peft.inject_adapter_in_model(config_cls(**kwargs, **chosen), model)
    except (ValueError, TypeError) as exc:
        key = culprit(config_cls, kwargs, list(keys), shapes) if keys else None
        raise UserError(f"{where or method}: {f'key {key!r}: ' if key else ''}peft cannot put "
                        f"{config_cls.__name__} on this model: {first_line(exc)}") from None
    adapted = {name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}
    if adapted != set(names):
        raise UserError(f"{method}: peft adapted {sorted(adapted ^ set(names))[:3]} instead of exactly the targets")
    return model


def merge_adapters(model: nn.Module, method: str) -> nn.Module:
    """Fold every peft layer into its Linear (peft's merge), unwrap it, and fuse q, k, v back into one qkv."""
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    for layer in layers:
        try:
            layer.merge()
        except NotImplementedError:
            raise UserError(f"{method}: peft cannot merge {type(layer).__name__} into its weights") from None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, name, child.get_base_layer())
    model.__dict__.pop("peft_config", None)
    return fuse_qkv(model)


@dataclass
class PeftTunerConfig:
    type: Literal["lora", "dora", "ia3", "loha", "lokr", "boft", "oft", "hra", "fourierft"] = "lora"
    config: Optional[str] = None  # YAML of the tuner's peft config kwargs and its `peft_type`; beats `type`
    targets: list[Target] = field(default_factory=lambda: ["q", "v"])


class PeftTuner(Method):
    name = "peft"
    description = "any peft tuner of Linear layers (type=ia3, or config=file.yaml) on q, k, v, o, fc1, fc2 (merges)"
    paper = ("Hugging Face peft; the tuner's own paper: LoRA (Hu et al. 2021), DoRA (Liu et al. 2024), IA3 (Liu et al. "
             "2022), LoHa and LoKr (Yeh et al. 2023), OFT (Qiu et al. 2023), BOFT (Liu et al. 2024), HRA (Yuan et al. "
             "2024), FourierFT (Gao et al. 2024)")
    Config = PeftTunerConfig
    families = ("vit", "swin")  # blocks with a fused qkv Linear (attn.qkv), the default targets q and v
    recipe = "noah"  # as lora, whose VTAB-1k numbers (NOAH) the tuners are compared with
    decay_rule = "timm"  # see the module docstring
    defaults_source = ("the tuner's peft 0.21 config defaults (no tuner but LoRA published VTAB-1k values) on LoRA's "
                       "targets q and v; lr 1e-3, wd 1e-4: NOAH's LoRA script (configs/LoRA/VTAB/"
                       "slurm_train_lora_vtab.sh)")

    def __init__(self, config=None):
        super().__init__(config)
        if self.config.config is not None:  # absolute: `eval` and `export` rebuild it from any folder
            self.config = dataclasses.replace(self.config, config=str(Path(self.config.config).expanduser().resolve()))
        self.file_keys: list[str] = []  # the keys the config file sets (its refusals name them)
        self.where = f"method {self.name}: config {self.config.config}" if self.config.config else f"method {self.name}"
        self.config_cls, self.kwargs = self._tuner()

    def identity(self):
        """The options and the tuner's resolved config: editing the config file makes a new run."""
        return {**super().identity(), "tuner": {"class": self.config_cls.__name__,
                                                "kwargs": {k: repr(v) for k, v in sorted(self.kwargs.items())}}}

    def _tuner(self) -> tuple[type, dict[str, Any]]:
        if self.config.config is None:
            return peft_class(self.config.type, f"method {self.name}")
        path = Path(self.config.config).expanduser()
        where = f"method {self.name}: config {path}"
        try:
            loaded = load_yaml(path.read_text(encoding="utf-8"), where)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{where}: cannot read it ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("peft_type"), str):
            raise UserError(f"{where}: expected a mapping of peft config options with a peft_type (e.g. 'ia3')")
        kwargs = dict(loaded)
        type_name = kwargs.pop("peft_type")
        if self.config.type not in (PeftTunerConfig.type, type_name.lower()):
            raise UserError(f"{where}: peft_type {type_name!r} contradicts type={self.config.type}")
        config_cls, defining = peft_class(type_name, where)
        self.file_keys = list(kwargs)
        return config_cls, checked_kwargs(config_cls, {**defining, **kwargs}, where)

    def check_fit(self, model):
        """A rank above the narrowest Linear it adapts; LoKr's decompose_factor must divide every width."""
        widths = target_widths(model, self.config.targets, self.name)
        named = (lambda key: f"config {self.config.config}: key {key!r}") if self.config.config else (
            lambda key: f"{self.config_cls.__name__} {key}")
        rank = self.kwargs.get("r")
        if widths and isinstance(rank, int):
            refuse_above(self, named("r"), rank, widths[0], "the width of the narrowest Linear it adapts")
        factor = self.kwargs.get("decompose_factor")
        if self.config_cls is peft.LoKrConfig and isinstance(factor, int) and factor > 0:  # -1: peft's automatic
            refuse_unfit_factor(self, named("decompose_factor"), factor, widths)

    def apply(self, model):
        return inject(model, self.config_cls, self.kwargs, self.config.targets, self.name, self.where, self.file_keys)

    def merge(self, model):
        return merge_adapters(model, self.name)
