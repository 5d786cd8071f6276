"""Where methods come from: the built-ins, the `petlbench.methods` entry-point group, and
`register_method` at run time. Nothing registers itself on import; this module looks them up.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from dataclasses import dataclass

from petlbench.backbones import ALL_FAMILIES
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import build, describe_fields, parse_pairs

ENTRY_POINT_GROUP = "petlbench.methods"

BUILTIN: dict[str, str] = {
    "full": "petlbench.methods.full:FullFineTuning",
    "linear": "petlbench.methods.linear:LinearProbe",
    "bitfit": "petlbench.methods.bitfit:BitFit",
    "adapter": "petlbench.methods.adapter:Adapter",
    "vpt_shallow": "petlbench.methods.vpt_shallow:VPTShallow",
    "vpt_deep": "petlbench.methods.vpt_deep:VPTDeep",
    "ssf": "petlbench.methods.ssf:SSF",
    "ln": "petlbench.methods.ln:LayerNormTuning",
    "partial": "petlbench.methods.partial:Partial",
    "fact": "petlbench.methods.fact:FacT",
    "vqt": "petlbench.methods.vqt:VQT",
    "conv_adapter": "petlbench.methods.conv_adapter:ConvAdapter",
    "vpt_pad": "petlbench.methods.vpt_pad:VPTPad",
    "lora": "petlbench.methods.lora:LoRA",
    "peft": "petlbench.methods.peft:PeftTuner",
    "kadaptation": "petlbench.methods.kadaptation:KAdaptation",
    "adaptformer": "petlbench.methods.adaptformer:AdaptFormer",
    "adapter_plus": "petlbench.methods.adapter_plus:AdapterPlus",
    "convpass": "petlbench.methods.convpass:Convpass",
    "difffit": "petlbench.methods.difffit:DiffFit",
    "repadapter": "petlbench.methods.repadapter:RepAdapter",
    "zeroshot": "petlbench.methods.zeroshot:ZeroShot",
    "cavpt": "petlbench.methods.cavpt:CAVPT",
    "mvlpt": "petlbench.methods.mvlpt:MVLPT",
    "dtl": "petlbench.methods.dtl:DTL",
    "selective": "petlbench.methods.selective:Selective",
    "e2vpt": "petlbench.methods.e2vpt:E2VPT",
    "coop": "petlbench.methods.coop:CoOp",
    "cocoop": "petlbench.methods.cocoop:CoCoOp",
    "tip_adapter": "petlbench.methods.tip_adapter:TipAdapter",
    "tip_adapter_f": "petlbench.methods.tip_adapter_f:TipAdapterF",
    "clip_adapter": "petlbench.methods.clip_adapter:ClipAdapter",
    "gps": "petlbench.methods.gps:GPS",
    "spt": "petlbench.methods.spt:SPT",
    "loramul_vptadd": "petlbench.methods.loramul_vptadd:LoRAVPT",
    "pace": "petlbench.methods.pace:PACE",
    "noah": "petlbench.methods.noah:Noah",
    "como": "petlbench.methods.como:CoMo",
    "como_free": "petlbench.methods.como:CoMoFree",
    "snell": "petlbench.methods.snell:SNELL",
}

_runtime: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class MethodEntry:
    name: str
    origin: str  # "builtin", "entry point <dist>" or "runtime"
    target: str | type[Method]  # "module:Class" or the class itself

    def load(self) -> type[Method]:
        if isinstance(self.target, type):
            return self.target
        module, _, attr = self.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"method {self.name!r} ({self.origin}): cannot load {self.target}: {exc}") from None
        _check_class(cls, self.name, self.origin)
        return cls


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method at run time (notebooks, tests). A name that already exists is an error."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise UserError(f"register_method: {getattr(cls, '__name__', cls)!r} needs a class attribute `name` (a string)")
    _check_class(cls, name, "runtime")
    if name in available_methods():
        raise UserError(f"method name {cls.name!r} is already registered ({available_methods()[cls.name].origin})")
    _runtime[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a runtime-registered method (built-ins and entry points stay)."""
    _runtime.pop(name, None)


def available_methods() -> dict[str, MethodEntry]:
    """Every known method by name; two sources offering one name is an error, never a silent pick."""
    entries = {name: MethodEntry(name, "builtin", target) for name, target in BUILTIN.items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        _add(entries, MethodEntry(ep.name, f"entry point ({dist})", ep.value))
    for name, cls in _runtime.items():
        _add(entries, MethodEntry(name, "runtime", cls))
    return entries


def get_method(name: str) -> type[Method]:
    entries = available_methods()
    if name not in entries:
        raise UserError(f"unknown method {name!r}; valid: {', '.join(sorted(entries))}")
    return entries[name].load()


def parse_method_spec(spec: str, defaults: dict[str, dict] | None = None) -> Method:
    """'vpt_deep:tokens=50:dropout=0.0' -> a configured VPTDeep instance.

    `defaults` maps method names to option values that replace the class defaults (a suite's
    `method_options`); options given in `spec` win over both.
    """
    name, *opts = spec.strip().split(":")
    name = name.strip()
    cls = get_method(name)
    values = dict((defaults or {}).get(name, {}))
    values.update(parse_pairs(":".join(opts), ":", f"method {name}") if opts else {})
    return cls(build(cls.Config, values, f"method {name}"))


def parse_method_list(text: str, defaults: dict[str, dict] | None = None) -> list[Method]:
    """'vpt_deep:tokens=50,linear' -> [VPTDeep(tokens=50), LinearProbe()]."""
    specs = [s for s in (part.strip() for part in text.split(",")) if s]
    if not specs:
        raise UserError(f"--methods: expected a comma-separated list of methods, got {text!r}")
    return [parse_method_spec(s, defaults) for s in specs]


def refuse_unsupported(methods: list[Method], family: str | None, backbone: str) -> None:
    """An unsupported method/backbone pair is bad input, found before any run (no failed record to retry)."""
    for method in methods:
        if not method.supports(family):
            what = f"a {family} backbone" if family else "of no family petlbench reads"
            raise UserError(f"method {method.name!r} supports {', '.join(method.families)} backbones; "
                            f"{backbone} is {what}")
        if method.needs_text and not str(backbone).startswith("clip:"):
            raise UserError(f"method {method.name!r} needs a CLIP backbone with its text tower "
                            f"(--backbone clip:<open_clip model>); {backbone} has none")


def method_options_help(cls: type[Method]) -> str:
    return describe_fields(cls.Config)


def _add(entries: dict[str, MethodEntry], entry: MethodEntry) -> None:
    if entry.name in entries:
        raise UserError(
            f"method name clash: {entry.name!r} is offered by {entries[entry.name].origin} "
            f"and by {entry.origin}; rename one of them")
    entries[entry.name] = entry


def _check_class(cls, name, origin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"method {name!r} ({origin}): {cls!r} is not a petlbench.method.Method subclass")
    unknown = [f for f in getattr(cls, "families", ()) if f not in ALL_FAMILIES]
    if unknown or not isinstance(getattr(cls, "families", None), tuple):
        raise UserError(f"method {name!r} ({origin}): `families` must be a tuple of {', '.join(ALL_FAMILIES)}, "
                        f"got {getattr(cls, 'families', None)!r}")
    if getattr(cls, "name", None) != name:
        raise UserError(f"method {name!r} ({origin}): class {cls.__name__} has name {getattr(cls, 'name', None)!r}")
    if not dataclasses.is_dataclass(cls.Config):
        raise UserError(f"method {name!r} ({origin}): {cls.__name__}.Config must be a dataclass of its options")
    try:
        describe_fields(cls.Config)  # a misdeclared Range shows when the method loads, not mid-sweep
    except UserError as exc:
        raise UserError(f"method {name!r} ({origin}): {exc}") from None
