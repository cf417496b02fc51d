"""From a config file's nested dicts to the frozen section dataclasses of ``rao_jax.config`` (unknown
keys and values of the wrong type fail with a ``ConfigError`` naming the dotted key), and back; loading
a config file by path."""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from rao_jax.errors import ConfigError


def _section_fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_section(cls, raw: Mapping[str, Any], prefix: str):
    fields = _section_fields(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"section {prefix.rstrip('.')!r}" if prefix else "the config"
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]} in {where}; known: {sorted(fields)}")
    values = {}
    for name, value in raw.items():
        kind = fields[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name} must be a section (a dict), got {value!r}")
            values[name] = build_section(kind, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, kind, prefix + name)
    return cls(**values)


def _coerce(value: Any, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return tuple(_coerce(v, item, name) for v in value)
    if origin in (Mapping, dict) or kind is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a dict, got {value!r}")
        return {k: to_plain(v, lists=True) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        return _coerce(value, next(a for a in options if a is not type(None)), name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    if kind in (int, float, str, bool) and wrong:
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r} ({type(value).__name__})")
    return value


def config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """What a config file's ``get_config()`` (``get_config(arg)`` when ``arg`` is given) returns. Config
    files are not a package: one builds on another by loading it with this, by path.

    Raises:
        ValueError: the file cannot be loaded.
    """
    spec = importlib.util.spec_from_file_location(f"_rao_config_{Path(path).stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def to_plain(value: Any, *, lists: bool = False) -> Any:
    """Dataclasses and mappings, nested, as plain dicts (a ConfigDict as its ``to_dict()``); with ``lists``,
    tuples as lists, the JSON form."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name), lists=lists) for f in dataclasses.fields(value)}
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: to_plain(v, lists=lists) for k, v in value.items()}
    return list(value) if lists and isinstance(value, tuple) else value


def to_dict(config) -> dict[str, Any]:
    """JSON-able form of a config (written next to checkpoints)."""
    return to_plain(config, lists=True)
