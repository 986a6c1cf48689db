"""Typed, validated configuration: `params.yaml` sections parsed into frozen dataclasses.

Every section is a dataclass whose fields carry their own contract (see CONTRIBUTING.md):
types (`int`, `float`, `bool`, `str`, `Literal[...]`, `tuple[...]`, `X | None`, nested dataclasses),
numeric ranges in field metadata (`ge`, `gt`, `le`, `lt`) and cross-field rules in `__post_init__`.
`parse(cls, mapping, key)` checks all of it and raises one `ConfigError` listing every problem, each
naming the full key (`model.vae.encoder.preset`) and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from ruamel.yaml import YAML, YAMLError

from pipeline.core.errors import UserError

T = TypeVar("T")

_RANGE_CHECKS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


class ConfigError(UserError, ValueError):
    """Configuration values that cannot be used: one problem per line, each naming the key and how to fix it."""

    @property
    def problems(self) -> list[str]:
        return str(self).splitlines()


@contextmanager
def collect(problems: list[str]) -> Iterator[None]:
    """Add the problems of a ConfigError raised in the block to `problems` and carry on, so that one run
    reports every mistake instead of one per attempt."""
    try:
        yield
    except ConfigError as err:
        problems.extend(err.problems)


def parse(cls: type[T], data: Any, key: str) -> T:
    """Build dataclass `cls` from a YAML mapping, validating every field; `key` names the mapping.

    Raises one ConfigError listing the problems of every field, nested mappings included. The cross-field
    rules of `__post_init__` read the fields, so they run (and can fail) only once every field is valid.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: expected a mapping with keys {_field_names(cls)}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    problems: list[str] = []
    values = {}
    for name, value in data.items():
        full_key = f"{key}.{name}"
        if name not in fields:
            problems.append(f"{full_key}: unknown key. Allowed keys under '{key}': {sorted(fields)}")
            continue
        with collect(problems):
            values[name] = _coerce(hints[name], value, full_key)
            _check_range(fields[name].metadata, values[name], full_key)
    if problems:
        raise ConfigError("\n".join(problems))
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
            return float(value)  # YAML reads `lr: 1` as an int
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
        args = (args[0],) * len(value)
    elif len(value) != len(args):
        raise ConfigError(f"{key}: got {len(value)} values; expected {describe(tp)}")
    problems: list[str] = []
    items = []
    for i, (arg, item) in enumerate(zip(args, value)):
        with collect(problems):
            items.append(_coerce(arg, item, f"{key}[{i}]"))
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(items)


def _check_range(metadata: typing.Mapping[str, Any], value: Any, key: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        for name, (ok, symbol) in _RANGE_CHECKS.items():
            if name in metadata and not ok(item, metadata[name]):
                raise ConfigError(f"{key}: got {value!r}; must be {symbol} {metadata[name]}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file, with errors that name the file.

    Read with the YAML 1.2 rules of ruamel.yaml, with which DVC reads params files and writes them back after
    `dvc exp run -S`: DVC writes the string "off" as a bare `off`, which YAML 1.1 (PyYAML) would read as False.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the repository root or pass --params")
    try:
        data = YAML(typ="safe").load(path.read_text()) or {}
    except YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data
