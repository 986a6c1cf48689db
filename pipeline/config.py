"""Typed, validated configuration: `params.yaml` sections parsed into frozen dataclasses.

Every section is a dataclass whose fields carry their own contract (see CONTRIBUTING.md):
types (`int`, `float`, `bool`, `str`, `Literal[...]`, `tuple[...]`, `X | None`, nested dataclasses),
numeric ranges in field metadata (`ge`, `gt`, `le`, `lt`) and cross-field rules in `__post_init__`.
`parse(cls, mapping, key)` checks all of it and fails on the first problem with a `ConfigError`
that names the full key (`model.vae.encoder.preset`) and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

_RANGE_CHECKS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


class ConfigError(ValueError):
    """A configuration value that cannot be used. The message names the key and how to fix it."""


def parse(cls: type[T], data: Any, key: str) -> T:
    """Build dataclass `cls` from a YAML mapping, validating every field; `key` names the mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: expected a mapping with keys {_field_names(cls)}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: unknown key. Allowed keys under '{key}': {sorted(fields)}"
        )
    hints = get_type_hints(cls)
    values = {}
    for name, value in data.items():
        full_key = f"{key}.{name}"
        values[name] = _coerce(hints[name], value, full_key)
        _check_range(fields[name].metadata, values[name], full_key)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{key}.{err}") from None


def describe(tp: Any) -> str:
    """A short human-readable description of an allowed type, for error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {_field_names(tp)}"
    return getattr(tp, "__name__", str(tp))


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, key)
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise ConfigError(f"{key}: got {value!r}; allowed: {describe(tp)}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # `X | None`: X's own error says what is wrong
            return _coerce(arms[0], value, key)
        for arm in arms:
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: got {value!r}; allowed: {describe(tp)}")
    if origin is tuple:
        return _coerce_tuple(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{key}: unsupported config field type {tp!r}")
    raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}); expected {describe(tp)}")


def _coerce_tuple(tp: Any, value: Any, key: str) -> tuple:
    args = get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: got {value!r}; expected {describe(tp)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key}: got {len(value)} values; expected {describe(tp)}")
    return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _check_range(metadata: typing.Mapping[str, Any], value: Any, key: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        for name, (ok, symbol) in _RANGE_CHECKS.items():
            if name in metadata and not ok(item, metadata[name]):
                raise ConfigError(f"{key}: got {value!r}; must be {symbol} {metadata[name]}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the repository root or pass --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data
