"""Typed `key=value` options for dataclasses: method options, training overrides, backbone args.

One parser serves `--methods vpt_deep:tokens=50`, `--train lr=0.01,epochs=5` and suite YAML values,
so every place that accepts options checks names and types the same way.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import yaml

from petlbench.errors import UserError


def parse_scalar(text: str) -> Any:
    """'32' -> 32, '0.1' -> 0.1, 'true' -> True, 'none' -> None, anything else stays a string."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) else text


def parse_pairs(text: str, sep: str, where: str) -> dict[str, Any]:
    """Split 'a=1<sep>b=x' into {'a': 1, 'b': 'x'}; `where` names the source in errors."""
    pairs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(sep))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"{where}: expected key=value, got {item!r}")
        pairs[key.strip()] = parse_scalar(value.strip())
    return pairs


def describe_fields(cls: type) -> str:
    """'tokens=50, dropout=0.1, init=xavier|normal|zeros' for error messages and `ls methods`."""
    parts = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        choices = _choices(_field_type(cls, f.name))
        shown = "|".join(map(str, choices)) if choices else _type_name(_field_type(cls, f.name))
        parts.append(f"{f.name}={default} ({shown})")
    return ", ".join(parts) if parts else "(no options)"


def build(cls: type, values: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from `values`, checking every key and coercing/validating types."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{where}: unknown option {unknown[0]!r}; valid: {describe_fields(cls)}")
    coerced = {k: _coerce(v, _field_type(cls, k), f"{where}: option {k!r}", cls) for k, v in values.items()}
    return cls(**coerced)


def as_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _field_type(cls: type, name: str):
    return typing.get_type_hints(cls)[name]


def _choices(tp) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _type_name(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return "|".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str, cls: type) -> Any:
    choices = _choices(tp)
    if choices is not None:
        if value not in choices:
            raise UserError(f"{where} must be one of {'|'.join(map(str, choices))}, got {value!r}")
        return value
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, bool, str) and type(value) is tp:
        return value
    if tp in (int, float, bool, str):
        raise UserError(f"{where} expects {tp.__name__}, got {value!r}; valid: {describe_fields(cls)}")
    return value
