"""Dataclass configs from YAML plus ``key.sub=value`` overrides, strictly checked.

Every recipe describes its settings as nested dataclasses. ``load_config`` reads an optional YAML file,
applies command-line overrides and builds the dataclass tree, refusing unknown keys and values of the
wrong type with a :class:`ConfigError` that names the offending key. ``to_dict`` goes the other way, so
the resolved config can be saved next to a run and read back.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override names an unknown key or carries a value of the wrong type."""


def to_dict(cfg: Any) -> Any:
    """Plain nested dicts/lists/scalars for a dataclass tree (YAML/JSON-safe)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults, unknown keys raise."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r:.60}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(_join(prefix, k) for k in unknown)}{where}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(prefix, name))
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a check across fields in __post_init__: say which section it is
        raise ConfigError(f"{prefix}: {e}" if prefix and not str(e).startswith(prefix) else str(e)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read ``path`` (YAML) if given, apply ``key.sub=value`` overrides, build and check ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        data = read_yaml_mapping(path, ConfigError, "YAML config") or {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        _set_path(data, key.strip().split("."), yaml.safe_load(raw) if raw != "" else "")
    return from_dict(cls, data)


def check_value(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked and converted as a config field of type ``tp`` would be (same rules as
    :func:`load_config`); a :class:`ConfigError` names ``key``. For readers of other files' fields."""
    return _coerce(tp, value, key)


def json_type(value: Any) -> str:
    """How JSON calls the type of a parsed value (for messages about a JSON file)."""
    for kind, name in ((bool, "true/false"), (dict, "an object"), (list, "an array"), (str, "a string"),
                       (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def read_text(path: str | Path, error: type[Exception] = ConfigError, what: str = "text") -> str:
    """The UTF-8 text of ``path``; every failure (missing, a folder, unreadable, not UTF-8) is one ``error``
    naming the file. The one reader of the text files users hand the toolkit (configs, lists, csv)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what} file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None


def read_yaml_mapping(path: str | Path, error: type[Exception] = ConfigError, what: str = "YAML") -> dict | None:
    """Parse the YAML file ``path`` whose top level must be a mapping (``None`` for an empty file); every
    failure (those of :func:`read_text`, not valid YAML, another top level) is one ``error`` naming the file."""
    text = read_text(path, error, what)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise error(f"{path}: top level must be a mapping")
    return loaded


def read_json(path: str | Path, error: type[Exception] = ConfigError, what: str = "JSON") -> Any:
    """Parse the JSON file ``path``; every failure (those of :func:`read_text`, not valid JSON) is one
    ``error`` naming the file."""
    text = read_text(path, error, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = data.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            data[k] = nxt
        data = nxt
    data[keys[-1]] = value


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "5e-4" as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value
