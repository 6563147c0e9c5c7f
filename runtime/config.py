"""One config dataclass per stage, loadable from YAML and overridable from the command line."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import InputError

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, where: str) -> Any:  # where: dotted key prefix
    """Convert a YAML/CLI value to the field's type (tuples from lists, paths from strings)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return _build(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if annotation is Path:
        return Path(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool) and not isinstance(value, annotation):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type[T], mapping: dict[str, Any], where: str) -> T:
    """A (nested) config dataclass from a mapping; unknown keys raise ValueError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in mapping.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ValueError(f"unknown key {where + key!r} for {cls.__name__} (known: {known})")
        values[key] = _coerce(value, hints[key], f"{where}{key}.")
    return cls(**values)


def load_config(cls: type[T], path: str | Path | None = None, /, **overrides: Any) -> T:
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then non-None ``overrides``.

    Unknown keys and values of the wrong type are an InputError naming the file and the key.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise InputError(path, "config file not found") from None
        except yaml.YAMLError as exc:
            raise InputError(path, f"not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise InputError(path, "config must be a mapping of keys to values")
        try:
            from_file = _build(cls, loaded, "")
        except ValueError as exc:
            raise InputError(path, str(exc)) from None
        values = {key: getattr(from_file, key) for key in loaded}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in names:
            raise TypeError(f"unknown override {key!r} for {cls.__name__}")
        values[key] = _coerce(value, hints[key], key)
    return cls(**values)


def dump_config(config: Any) -> dict[str, Any]:
    """A config as plain YAML/JSON-friendly values (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
