"""Typed `key=value` options for dataclasses: method options, training overrides, backbone args.

One parser serves `--methods vpt_deep:tokens=50`, `--train lr=0.01,epochs=5` and suite YAML values,
so every place that accepts options checks names, types and declared ranges the same way. One YAML
loader serves suites, `--grid` and the values of `key=value`, so `1e-3` is a float everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from petlbench.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric option, declared where it is defined: `tokens: Annotated[int, Range(min=1)] = 50`.

    `min`/`max` are inclusive, `gt`/`lt` exclusive. `build` refuses values outside, and NaN or inf;
    `describe_fields` (and so `petlbench ls methods`) shows the range.
    """
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None

    def __post_init__(self):
        if (self.min is not None and self.gt is not None) or (self.max is not None and self.lt is not None):
            raise TypeError("Range: give at most one lower bound (min or gt) and one upper bound (max or lt)")

    def holds(self, value: float) -> bool:
        return (math.isfinite(value) and (self.min is None or value >= self.min)
                and (self.gt is None or value > self.gt) and (self.max is None or value <= self.max)
                and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = ("[", ">=", self.min) if self.min is not None else ("(", ">", self.gt) if self.gt is not None else None
        high = ("]", "<=", self.max) if self.max is not None else (")", "<", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}{low[2]:g}, {high[2]:g}{high[0]}"
        bound = low or high
        return f"{bound[1]} {bound[2]:g}" if bound else "finite"


# YAML 1.1 (PyYAML) reads 1e-3 as a string; these are YAML 1.2's floats (plus 1.1's `_` separators).
FLOAT_TAG = "tag:yaml.org,2002:float"
FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*\.(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"key {key!r} is given twice (line {first} and line {line})")
        self.key, self.line, self.first = key, line, first


class Loader(yaml.SafeLoader):
    """yaml.safe_load's types and constructors, with YAML 1.2 floats and duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of its own is an override, not a duplicate
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # SafeLoader refuses it below
                if key in seen:
                    raise DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != FLOAT_TAG]
                                  for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver(FLOAT_TAG, FLOAT, list("-+0123456789."))


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML text safely; errors are one line naming `where` (a file or a flag) and the line."""
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 -- Loader is a SafeLoader
    except DuplicateKey as exc:
        raise UserError(f"{where}: {exc}; only one may stay") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: not valid YAML ({at}{what})") from None


def read_yaml(path: Path, expected: str) -> Any:
    """A YAML file's contents; a file that cannot be read, is not UTF-8 or not YAML is one line naming it and
    `expected` (what the file should hold)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); expected "
                        f"{expected}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}); expected {expected}") from None
    return load_yaml(text, str(path))


def finite(value: Any) -> bool:
    """No NaN or inf anywhere in a value (inside lists and mappings too): for values no dataclass types."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return True


def parse_scalar(text: str) -> Any:
    """'32' -> 32, '1e-3' -> 0.001, 'true' -> True, 'none' -> None, anything else stays a string."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = yaml.load(text, Loader=Loader)  # noqa: S506
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
    """'tokens=50 (int >= 1), init=xavier (xavier|normal|zeros)' for error messages and `ls methods`."""
    parts = []
    for f in dataclasses.fields(cls):
        tp, bounds = field_spec(cls, f.name)
        choices = _choices(tp)
        shown = "|".join(map(str, choices)) if choices else _type_name(tp)
        default = _default(f)
        default = "+".join(map(str, default)) if isinstance(default, list) else default
        parts.append(f"{f.name}={default} ({shown}{f' {bounds}' if bounds else ''})")
    return ", ".join(parts) if parts else "(no options)"


def build(cls: type, values: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from `values`, checking every key, type and declared Range."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{where}: unknown option {unknown[0]!r}; valid: {describe_fields(cls)}")
    coerced = {k: _coerce(v, *field_spec(cls, k), f"{where}: option {k!r}", cls) for k, v in values.items()}
    return cls(**coerced)


def as_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


@functools.lru_cache(maxsize=None)
def field_spec(cls: type, name: str) -> tuple[Any, Range | None]:
    """The field's type without `Annotated`, and its Range if one is declared (also inside Optional)."""
    try:
        tp, bounds = typing.get_type_hints(cls, include_extras=True)[name], None
    except (NameError, TypeError) as exc:  # an annotation naming something its module does not import
        raise UserError(f"{cls.__name__}: cannot read the types of its options ({exc})") from None
    if typing.get_origin(tp) is typing.Union:  # Optional[Annotated[X, Range]] -> Annotated[Optional[X], Range]
        inner = [_split(a) for a in typing.get_args(tp)]
        bounds = next((b for _, b in inner if b), None)
        tp = typing.Union[tuple(t for t, _ in inner)] if bounds else tp
    else:
        tp, bounds = _split(tp)
    if bounds and not set(typing.get_args(tp) or (tp,)) - {type(None)} <= {int, float}:
        raise UserError(f"{cls.__name__}.{name}: a Range applies to int or float options, not {_type_name(tp)}")
    return tp, bounds


def _split(tp) -> tuple[Any, Range | None]:
    if typing.get_origin(tp) is not Annotated:
        return tp, None
    base, *meta = typing.get_args(tp)
    return base, next((m for m in meta if isinstance(m, Range)), None)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _choices(tp) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _type_name(tp) -> str:
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}, a+b"
    if _choices(tp):
        return "|".join(map(str, _choices(tp)))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return "|".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, bounds: Range | None, where: str, cls: type) -> Any:
    if typing.get_origin(tp) is list:  # a YAML list, or 'q+v' on the command line (where ',' and ':' are taken)
        (item,) = typing.get_args(tp)
        items = [parse_scalar(v.strip()) for v in value.split("+")] if isinstance(value, str) else value
        items = [items] if isinstance(items, (int, float)) and not isinstance(items, bool) else items  # 'blocks=-1'
        if not isinstance(items, list) or not items:
            raise UserError(f"{where} expects a non-empty list of {_type_name(item)} (a+b on the command line, "
                            f"[a, b] in YAML), got {value!r}")
        return [_coerce(v, item, bounds, where, cls) for v in items]
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
        value = float(value)
    elif tp in (int, float, bool, str) and type(value) is not tp:
        raise UserError(f"{where} expects {tp.__name__}, got {value!r}; valid: {describe_fields(cls)}")
    if tp in (int, float) and not (bounds or Range()).holds(value):  # without bounds: finite (no NaN, inf)
        raise UserError(f"{where} expects {tp.__name__} {bounds}, got {value!r}" if bounds
                        else f"{where} expects a finite number, got {value!r}")
    return value
