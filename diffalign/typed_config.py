"""Typed configs from plain data: dataclasses built from YAML-like mappings, every problem reported
at once with the key it concerns (:func:`from_dict`), plus the field metadata that adds checks
(paths, bounds, completion of a free-form block).

The machinery only: :mod:`diffalign.config` holds diffalign's own config classes and the YAML
loading; objectives and reward models build their config classes here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from diffalign.errors import DiffalignError

# Field metadata: how a path-valued key is checked.
MUST_EXIST = {"path": "must_exist"}
"""The value is a local file or folder that must exist."""
LOCAL_OR_HUB = {"path": "local_or_hub"}
"""The value is a hub id or a local path; it must exist when it is written as a path
(starting with ``/``, ``./``, ``../`` or ``~``)."""


def bounds(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> dict:
    """Field metadata: the value (each item of a list or tuple; ``None`` is not checked) must lie
    in ``[low, high]``, open at an end with ``low_open`` / ``high_open``. Checked when the config
    loads, so ``diffalign check-config`` and ``diffalign train`` refuse the same values, before
    anything loads."""
    return {"bounds": (low, high, low_open, high_open)}


AT_LEAST_0 = bounds(0)
AT_LEAST_1 = bounds(1)
POSITIVE = bounds(0, low_open=True)


class ConfigError(DiffalignError, ValueError):
    """One or more problems in a config, each naming the key and its source."""


def from_dict(schema: type, data: Any, source: str = "<dict>", override_sources: dict[str, str] | None = None):
    """Build the dataclass ``schema`` from plain data, or raise one :class:`ConfigError`."""
    errors: list[tuple[str, str]] = []
    value = _build(schema, data, "", errors)
    if errors:
        sources = override_sources or {}

        def where(key: str) -> str:
            hits = [s for k, s in sources.items() if key == k or key.startswith(k + ".")]
            return hits[-1] if hits else source

        lines = "\n".join(f"  - {key or '<top level>'}: {msg} (from {where(key)})" for key, msg in errors)
        raise ConfigError(f"invalid config {source}:\n{lines}")
    return value


def to_dict(config) -> dict[str, Any]:
    """Plain data for a config (YAML-serialisable; tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def closest(name: str, known) -> str | None:
    """The known name most like ``name``; among equally close ones, one with the same letters (a
    transposition: ``diffusion_dop`` is ``diffusion_dpo``, not ``diffusion_dro``)."""
    close = difflib.get_close_matches(name, known, n=3)
    same_letters = [c for c in close if sorted(c) == sorted(name)]
    return (same_letters or close or [None])[0]


def lookup(table: dict, name: str, kind: str):
    """``table[name]``, or a :class:`ConfigError` suggesting the closest name and listing them all
    (the one behaviour of every name → class table: objectives, reward models, ...)."""
    if name not in table:
        close = closest(str(name), table)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ConfigError(f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(table)}")
    return table[name]


def build_checked(schema: type, data: Any, prefix: str, errors: list) -> Any:
    """Build the dataclass ``schema`` from ``data``, appending each problem to ``errors`` as
    ``(key, message)`` with keys under ``prefix``; ``None`` when there was one. (:func:`from_dict`
    raises them instead; a field's ``complete`` hook uses this to check a free-form block in place.)

    A schema may define ``config_migrate(data, prefix, errors) -> data`` (run first: moves keys
    from an old place to their new one) and ``config_complete(kwargs, prefix, errors)`` (run once
    every field is built: completes fields that depend on others)."""
    return _build(schema, data, prefix, errors)


def _build(schema: type, data: Any, prefix: str, errors: list) -> Any:
    if not isinstance(data, dict):
        errors.append((prefix, f"expected a mapping of {schema.__name__} keys, got {_describe(data)}"))
        return None
    first_error = len(errors)
    migrate = getattr(schema, "config_migrate", None)
    if migrate is not None:  # old spellings of keys, moved to where they live now (with a warning)
        data = migrate(dict(data), prefix, errors)
    hints = typing.get_type_hints(schema)
    known = {f.name: f for f in dataclasses.fields(schema)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {_join(prefix, close[0])!r}?)" if close else f"; known keys: {', '.join(known)}"
            errors.append((_join(prefix, key), f"unknown key{hint}"))
    kwargs = {}
    for name, f in known.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append((key, "missing required key"))
            continue
        before = len(errors)
        kwargs[name] = _coerce(_over_default(f, data[name]), hints[name], key, errors)
        if f.metadata.get("path") and isinstance(kwargs[name], str):
            _check_path(kwargs[name], f.metadata["path"], key, errors)
        if f.metadata.get("bounds") and len(errors) == before:
            _check_bounds(kwargs[name], f.metadata["bounds"], key, errors)
        if f.metadata.get("complete") and len(errors) == before:
            kwargs[name] = f.metadata["complete"](kwargs[name], key, errors)
    complete = getattr(schema, "config_complete", None)
    if complete is not None and len(errors) == first_error:  # blocks that depend on other fields
        complete(kwargs, prefix, errors)
    return None if len(errors) > first_error else schema(**kwargs)


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a field whose default is a dataclass instance sets keys *of that
    default*: ``inversion: {steps: 3}`` keeps the objective's own other inversion defaults."""
    if f.default_factory is dataclasses.MISSING or not isinstance(value, dict):
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    return _merged(dataclasses.asdict(default), value)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def _coerce(value: Any, hint: Any, key: str, errors: list) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], key, errors)
        trial: list = []
        for option in options:
            out = _coerce(value, option, key, trial)
            if not trial:
                return out
            trial.clear()
        errors.append((key, f"expected {_type_name(hint)}, got {_describe(value)}"))
        return None
    if origin is Literal:
        if value not in args:
            errors.append((key, f"expected one of {', '.join(repr(a) for a in args)}, got {value!r}"))
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, errors)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append((key, f"expected {_type_name(hint)}, got {_describe(value)}"))
            return None
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                errors.append((key, f"expected {len(args)} items, got {len(value)}"))
                return None
            return tuple(_coerce(v, a, f"{key}[{i}]", errors) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            errors.append((key, f"expected a mapping, got {_describe(value)}"))
            return None
        return dict(value)
    return _coerce_scalar(value, hint, key, errors)


def _coerce_scalar(value: Any, hint: type, key: str, errors: list) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        raise TypeError(f"config field {key} has an unsupported type {hint!r}")
    if hint is float and not ok and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" (no dot) as a string
            value, ok = float(value), True
        except ValueError:
            pass
    if ok and hint is float and not math.isfinite(value):  # .nan and .inf parse, and pass every bound
        errors.append((key, f"expected a finite number, got {value!r}"))
        return None
    if ok:
        return float(value) if hint is float else value
    errors.append((key, f"expected {_type_name(hint)}, got {_describe(value)}"))
    return None


def _check_path(value: str, rule: str, key: str, errors: list) -> None:
    looks_local = value.startswith(("/", "./", "../", "~"))
    if rule == "must_exist" or looks_local:
        if not Path(value).expanduser().exists():
            where = "" if Path(value).is_absolute() else f" (relative to the working directory {Path.cwd()})"
            errors.append((key, f"path {value!r} does not exist{where}"))


def _check_bounds(value: Any, rule: tuple, key: str, errors: list) -> None:
    low, high, low_open, high_open = rule
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None:
            continue
        below = low is not None and (item <= low if low_open else item < low)
        above = high is not None and (item >= high if high_open else item > high)
        if below or above:
            if high is None:
                wanted = f"{'>' if low_open else '≥'} {low:g}"
            else:
                wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            errors.append((key, f"expected a value {wanted}, got {item!r}"))
            return


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            hint.__name__, hint.__name__
        )
    return str(hint).replace("typing.", "")
