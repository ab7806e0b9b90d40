"""A plugin's typed options: described for ``dllm-strategies plugins`` and built, coerced and
validated from a parsed spec's values (``threshold(tau=0.9)`` -> ``Threshold.Options(tau=0.9)``)."""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from dllm_strategies.errors import SpecError


def option_fields(cls: type) -> list[dict[str, Any]]:
    """Describe a plugin's options: name, type, default, doc."""
    options = getattr(cls, "Options", None)
    if options is None or not attrs.has(options):
        return []
    hints = _hints(options)
    out = []
    for field in attrs.fields(options):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        out.append({"name": field.name, "type": _type_name(hints.get(field.name, Any)),
                    "default": None if default is attrs.NOTHING else default,
                    "required": default is attrs.NOTHING})
    return out


@functools.cache
def _hints(options: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(options)
    except Exception:
        return {f.name: f.type for f in attrs.fields(options)}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(plugin: str, key: str, value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(plugin, key, value, arg)
            except SpecError:
                continue
        raise SpecError(f"option {key}={value!r} of {plugin}: expected {_type_name(tp)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise SpecError(f"option {key}={value!r} of {plugin}: expected one of {', '.join(map(repr, args))}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is Path and isinstance(value, str):
        return Path(value)
    raise SpecError(f"option {key}={value!r} of {plugin}: expected {_type_name(tp)}, got {type(value).__name__}")


def build_options(name: str, cls: type, raw: Mapping[str, Any]) -> Any:
    """Typed, validated options for plugin ``name`` from parsed spec values."""
    options = getattr(cls, "Options", None)
    if options is None or not attrs.has(options) or not attrs.fields(options):
        if raw:
            raise SpecError(f"plugin {name!r} takes no options, got {', '.join(raw)}")
        return options() if options is not None and attrs.has(options) else None
    fields = {f.name: f for f in attrs.fields(options)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(f"{f['name']} ({f['type']}, default {f['default']!r})" for f in option_fields(cls))
            raise SpecError(f"plugin {name!r} has no option {key!r}{hint} Options: {known or 'none'}")
    hints = _hints(options)
    values = {key: _coerce(name, key, value, hints.get(key, Any)) for key, value in raw.items()}
    try:
        return options(**values)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"bad options for plugin {name!r}: {exc}") from exc
