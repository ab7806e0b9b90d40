"""Plugin discovery and per-run plugin managers.

Every plugin, built-in or third-party, is found the same way: an entry point in the group
``dllm_strategies``.  An entry point that names a **class** is a *strategy plugin*: a run that
chooses it (``threshold(tau=0.9)``) gets a fresh instance built from its typed ``Options``.
An entry point that names any other object (a module) is a *registration plugin*: it is
consulted for ``dllm_models`` and ``dllm_commands``.

``DLLM_STRATEGIES_PLUGINS=dist-a,dist-b`` limits loading to those distributions
(empty: none; unset: all).  Each run builds its own :class:`Strategy` (its own
``pluggy.PluginManager``), so what one run chooses never leaks into the next.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import inspect
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pluggy

from dllm_strategies import hookspecs
from dllm_strategies.errors import ModelError, ModelOutputError, PluginError, SpecError
from dllm_strategies.spec import SpecItem, format_spec, parse_spec

GROUP = hookspecs.PROJECT
ALLOW_ENV = "DLLM_STRATEGIES_PLUGINS"
EXCLUSIVE_HOOKS = ("dllm_schedule", "dllm_forward", "dllm_sample", "dllm_score", "dllm_remask")
CORE = "core"


class Plugin:
    """Convenient base of a strategy plugin (any class with the same shape works).

    Attributes:
        Options: an ``attrs`` class of typed, validated options (none by default).
        revocable: True if its ``dllm_remask`` may un-commit tokens (``Commit.revoke``).
        stochastic: True if its choices are random (seeded by ``config.seed``), so a row decoded
            in a batch may differ from the same row decoded alone.
        conflicts: ``{plugin name: reason}`` of plugins it cannot be combined with.
    """

    @attrs.frozen
    class Options:
        pass

    revocable: bool = False
    stochastic: bool = False
    conflicts: Mapping[str, str] = {}

    def __init__(self, options: Any = None):
        self.options = options if options is not None else type(self).Options()


# ------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------
@attrs.frozen
class PluginInfo:
    """An installed plugin: entry point ``name``, the ``distribution`` (and ``version``)
    that declares it, and the ``target`` ``module:attr`` it points to."""

    name: str
    distribution: str
    version: str
    target: str
    entry_point: importlib.metadata.EntryPoint = attrs.field(eq=False, repr=False)

    def load(self) -> Any:
        try:
            return self.entry_point.load()
        except Exception as exc:
            raise SpecError(
                f"plugin {self.name!r} (from {self.distribution}) failed to import {self.target}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _allowed() -> set[str] | None:
    value = os.environ.get(ALLOW_ENV)
    if value is None:
        return None
    return {_normal(name) for name in value.split(",") if name.strip()}


def _normal(dist: str) -> str:
    return dist.strip().lower().replace("_", "-")


def discover() -> dict[str, list[PluginInfo]]:
    """Installed entry points of the group, by name (a list: two distributions may clash).

    Reading every distribution's metadata is slow, so the answer is kept for as long as
    what decides it (``sys.path`` and the allowlist) stays the same.
    """
    return _discover(tuple(sys.path), os.environ.get(ALLOW_ENV))


@functools.lru_cache(maxsize=8)
def _discover(path: tuple[str, ...], allow: str | None) -> dict[str, list[PluginInfo]]:
    allowed = _allowed()
    found: dict[str, list[PluginInfo]] = {}
    seen: set[tuple[str, str]] = set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        if allowed is not None and _normal(dist_name) not in allowed:
            continue
        for ep in dist.entry_points:
            if ep.group != GROUP or (dist_name, ep.name) in seen:
                continue
            seen.add((dist_name, ep.name))
            found.setdefault(ep.name, []).append(
                PluginInfo(name=ep.name, distribution=dist_name, version=dist.version or "?",
                           target=ep.value, entry_point=ep)
            )
    return found


def _unique(name: str, infos: list[PluginInfo]) -> PluginInfo:
    if len(infos) > 1:
        sources = ", ".join(f"{i.distribution} ({i.target})" for i in infos)
        raise SpecError(f"plugin name {name!r} is declared by several distributions: {sources}; "
                        f"limit loading with {ALLOW_ENV}=<distribution>")
    return infos[0]


def strategy_plugins() -> dict[str, tuple[PluginInfo, type]]:
    """Installed strategy plugins: name -> (info, class)."""
    out = {}
    for name, infos in sorted(discover().items()):
        info = _unique(name, infos)
        target = info.load()
        if inspect.isclass(target):
            out[name] = (info, target)
    return out


def registration_plugins() -> list[tuple[PluginInfo, Any]]:
    out = []
    for name, infos in sorted(discover().items()):
        for info in infos:
            target = info.load()
            if not inspect.isclass(target):
                out.append((info, target))
    return out


def _installed_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    from dllm_strategies import builtin

    pm.register(builtin, name="core")
    for info, target in registration_plugins():
        pm.register(target, name=f"{info.distribution}:{info.name}")
    for name, (info, cls) in strategy_plugins().items():
        if any(isinstance(inspect.getattr_static(cls, h, None), (staticmethod, classmethod))
               for h in ("dllm_models", "dllm_commands")):
            pm.register(cls, name=f"{info.distribution}:{name}")
    pm.check_pending()
    return pm


def installed_models() -> dict[str, dict[str, Any]]:
    """Named models registered through ``dllm_models``: name -> {path, strategy, block_length, description,
    source}."""
    models: dict[str, dict[str, Any]] = {}
    pm = _installed_manager()
    for impl in reversed(pm.hook.dllm_models.get_hookimpls()):
        def register(name: str, path: str | Path, *, strategy: str | None = None, block_length: int | None = None,
                     description: str = "", _source: str = impl.plugin_name) -> None:
            if name in models:
                raise ModelError(f"model name {name!r} registered twice: by {models[name]['source']} and {_source}")
            models[name] = {"path": Path(path), "strategy": strategy, "block_length": block_length,
                            "description": description, "source": _source}

        impl.function(register=register)
    return models


def add_commands(subparsers) -> None:
    _installed_manager().hook.dllm_commands(subparsers=subparsers)


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# One run's strategy
# ------------------------------------------------------------------------------------------
@attrs.define
class Strategy:
    """The plugins one run chose, registered on a manager of their own.

    Attributes:
        items: the parsed spec.
        pm: the run's ``pluggy.PluginManager`` (core defaults + chosen plugins).
        plugins: name -> plugin instance.
        owners: exclusive hook -> name of the plugin that answers it (``core`` for defaults).
    """

    items: list[SpecItem]
    pm: pluggy.PluginManager
    plugins: dict[str, Any]
    owners: dict[str, str]

    @property
    def hook(self):
        return self.pm.hook

    @property
    def spec(self) -> str:
        return format_spec(self.items)

    def owner(self, hook: str) -> Any:
        return self.pm.get_plugin(self.owners[hook])

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook``; an exception from a plugin becomes a :class:`PluginError` naming it."""
        try:
            return getattr(self.pm.hook, hook)(**kwargs)
        except (PluginError, ModelOutputError):
            raise
        except Exception as exc:
            culprit = self._culprit(hook, exc)
            raise PluginError(
                f"plugin {culprit!r} raised {type(exc).__name__} in {hook}: {exc}", plugin=culprit, hook=hook
            ) from exc

    def _culprit(self, hook: str, exc: BaseException) -> str:
        codes = {}
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            function = getattr(impl.function, "__func__", impl.function)
            code = getattr(function, "__code__", None)
            if code is not None:
                codes[code] = impl.plugin_name
        culprit = None
        tb = exc.__traceback__
        while tb is not None:
            culprit = codes.get(tb.tb_frame.f_code, culprit)
            tb = tb.tb_next
        return culprit or "unknown"


def resolve(spec: str | Iterable[Any] | None) -> list[tuple[SpecItem, PluginInfo, type, Any]]:
    """Check a spec against the installed plugins: (item, info, class, options) per item."""
    items = parse_spec(spec)
    if not items:
        return []
    known = discover()
    out = []
    names = set()
    for item in items:
        if item.name in names:
            raise SpecError(f"plugin {item.name!r} is chosen twice in {format_spec(items)!r}; give it once")
        names.add(item.name)
        if item.name not in known:
            close = difflib.get_close_matches(item.name, known, n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            allow = f" ({ALLOW_ENV}={os.environ[ALLOW_ENV]!r} limits loading)" if ALLOW_ENV in os.environ else ""
            raise SpecError(f"unknown plugin {item.name!r}.{hint} Known plugins: "
                            f"{', '.join(sorted(known)) or 'none'}{allow}")
        info = _unique(item.name, known[item.name])
        cls = info.load()
        if not inspect.isclass(cls):
            raise SpecError(f"{item.name!r} (from {info.distribution}) registers models or commands; "
                            "it is not a strategy plugin")
        out.append((item, info, cls, build_options(item.name, cls, item.options)))
    for i, (a, _, cls_a, _) in enumerate(out):
        for b, _, cls_b, _ in out[i + 1:]:
            reason = (getattr(cls_a, "conflicts", {}) or {}).get(b.name) or \
                (getattr(cls_b, "conflicts", {}) or {}).get(a.name)
            if reason:
                raise SpecError(f"plugins {a.name!r} and {b.name!r} cannot be combined: {reason}")
    return out


def build_strategy(spec: str | Iterable[Any] | None = None) -> Strategy:
    """A fresh :class:`Strategy` for one run: core defaults plus the plugins of ``spec``."""
    from dllm_strategies import defaults

    resolved = resolve(spec)
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(defaults.CoreDefaults(), name=CORE)
    plugins: dict[str, Any] = {}
    # Winners ('!') register last: pluggy calls the latest registration first.
    for item, _info, cls, options in sorted(resolved, key=lambda r: r[0].wins):
        try:
            instance = cls(options) if options is not None else cls()
        except Exception as exc:
            raise SpecError(f"plugin {item.name!r} could not be created: {type(exc).__name__}: {exc}") from exc
        try:
            pm.register(instance, name=item.name)
        except ValueError as exc:
            raise SpecError(f"plugin {item.name!r} could not be registered: {exc}") from exc
        plugins[item.name] = instance
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise SpecError(f"plugin {exc.plugin_name if hasattr(exc, 'plugin_name') else '?'!r} implements a "
                        f"hook that does not exist: {exc}. Known hooks: {', '.join(hook_names())}") from exc
    owners = _owners(pm, resolved)
    return Strategy(items=[r[0] for r in resolved], pm=pm, plugins=plugins, owners=owners)


def _owners(pm: pluggy.PluginManager, resolved) -> dict[str, str]:
    wins = {item.name for item, *_ in resolved if item.wins}
    owners = {}
    for hook in EXCLUSIVE_HOOKS:
        impls = [i for i in getattr(pm.hook, hook).get_hookimpls()
                 if i.plugin_name != CORE and not (i.wrapper or i.hookwrapper)]
        names = [i.plugin_name for i in impls]
        if len(names) > 1:
            winners = [n for n in names if n in wins]
            if len(winners) != 1:
                a, b = names[0], names[1]
                raise SpecError(
                    f"plugins {a!r} and {b!r} both implement {hook}, which only one plugin may own; "
                    f"choose one, or mark the one that wins with '!' (e.g. '{a}!+{b}')"
                )
            owners[hook] = winners[0]
        else:
            owners[hook] = names[0] if names else CORE
    return owners


def hook_names() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("dllm_")]
