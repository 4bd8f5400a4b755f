"""Turn plain YAML mappings into frozen dataclasses, failing early with one clear message.

Each dataclass field may carry ``metadata`` with ``min`` / ``max`` (inclusive bounds),
``choices`` (allowed values) and ``doc``. Cross-field rules live in a ``check(self, path)``
method on the dataclass, called after every field has been built.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union, get_args, get_origin


class ConfigError(ValueError):
    """Invalid configuration: the message names the key (dotted path) and what is allowed."""


def bounded(default=dataclasses.MISSING, *, min=None, max=None, choices=None, doc=""):
    """A dataclass field with bounds / allowed values checked by :func:`build`."""
    meta = {"min": min, "max": max, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp)
        return f"list of {_type_name(item)}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, path: str):
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _convert(value, option, path)
            except ConfigError as err:
                errors.append(err)
        # A single non-null alternative gives the most useful message.
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) == 1 and value is not None:
            raise errors[[a for a in get_args(tp)].index(options[0])]
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {_convert(k, key_t, path): _convert(v, val_t, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        # YAML gives ints; accept floats like 1.0e6 only when they are whole numbers
        # (and finite: int(inf) would raise OverflowError instead of a ConfigError).
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        # .nan passes every bound check (comparisons are False) and .inf passes open-ended ones.
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def _check_bounds(value, meta, path):
    choices = meta.get("choices")
    if choices is not None and value is not None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item not in choices:
                raise ConfigError(f"{path}: {item!r} is not allowed; choose one of {list(choices)}")
    lo, hi = meta.get("min"), meta.get("max")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item is None or isinstance(item, (str, bool)):
            continue
        if lo is not None and item < lo:
            raise ConfigError(f"{path}: {item!r} is below the minimum {lo}")
        if hi is not None and item > hi:
            raise ConfigError(f"{path}: {item!r} is above the maximum {hi}")


def build(cls, data: Any, path: str):
    """Build dataclass ``cls`` from mapping ``data``; ``path`` is the dotted key for messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping ({cls.__name__}), got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not all be strings
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}: unknown key; allowed keys under {path} are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key ({_type_name(hints[name])})")
            continue
        value = _convert(data[name], hints[name], key)
        _check_bounds(value, f.metadata, key)
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj


def require(cond: bool, path: str, message: str) -> None:
    """Raise a ConfigError at ``path`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"{path}: {message}")
