"""Reading ``params.yaml`` sections into small frozen dataclasses, with errors that name the key."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from advreid.errors import BadInputError
from advreid.io import load_yaml

T = TypeVar("T")


class ParamsError(BadInputError, ValueError):
    """A params section is missing, has an unknown key, or a value of the wrong type."""


def load_params(section: str | None = None, path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """Return the whole params file, or one top-level section of it (dots select nested sections)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root)")
    data = load_yaml(path.read_text()) or {}
    if section is None:
        return data
    node: Any = data
    for part in section.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{path}: section '{section}' not found (missing key '{part}')")
        node = node[part]
    return node


def build(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Construct dataclass ``cls`` from ``values``; unknown or missing keys raise ParamsError naming them."""
    if not isinstance(values, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except (TypeError, ValueError) as err:  # a missing key, or a dataclass that validates itself
        raise ParamsError(f"{where}: {err}") from err


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (floats accept ints, no number accepts a bool); errors name
    the key, the expected type and the value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for arg in options:
            try:
                return _coerce(value, arg, where)
            except ParamsError:
                continue
        expected = " or ".join(_type_name(a) for a in args)
        raise ParamsError(f"{where}: expected {expected}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, where)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ParamsError(f"{where}: expected float, got {value!r}")
    if hint in (int, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ParamsError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def require(ok: bool, key: str, condition: str, value: Any) -> None:
    """Raise ParamsError ``<key>: must be <condition>, got <value>`` unless ``ok`` (one condition per message)."""
    if not ok:
        raise ParamsError(f"{key}: must be {condition}, got {value!r}")


def require_replicate_seeds(seeds: tuple[int, ...], where: str, main_seeds: Mapping[str, int]) -> None:
    """Seeds of a ``*_seed@<k>`` replicate stage: distinct non-negative integers, none a main stage's seed
    (``main_seeds``: the param key that holds it -> the seed)."""
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ParamsError(f"{where}.seeds: must be non-negative integers, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"{where}.seeds: must be distinct, got {list(seeds)}")
    for key, seed in main_seeds.items():
        if seed in seeds:
            raise ParamsError(f"{where}.seeds: {seed} is {key}, the seed the main stages train; use other seeds")


def require_counts(settings: Any, where: str, names: tuple[str, ...], minimum: int = 1) -> None:
    """Each named integer field of ``settings`` is >= ``minimum`` (batch sizes, epochs, counts)."""
    for name in names:
        value = getattr(settings, name)
        require(value >= minimum, f"{where}.{name}", f">= {minimum}", value)
