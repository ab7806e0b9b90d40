"""A strategy: the plugins a spec chooses, parsed and validated once, started fresh for each run.

``Strategy.parse("threshold(tau=0.9)+eot")`` checks the spec against what is installed (names,
typed options, conflicts, exclusive-hook owners) and returns an immutable value; every caller
validates through it.  ``strategy.start()`` builds one run's :class:`RunPlugins`: a
``pluggy.PluginManager`` of its own holding the core defaults and a fresh instance of each chosen
plugin, so what one run keeps on ``self`` never leaks into the next.

A spec may also hold plugin objects given in Python, beside names (for prototyping in a notebook,
no entry point needed): ``[MyRule(MyRule.Options(k=2)), "eot"]``, a class, or a module of hook
functions.  They are validated exactly as installed plugins are.
"""

from __future__ import annotations

import difflib
import inspect
import os
import types
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from dllm_strategies import hookspecs
from dllm_strategies.defaults import CoreDefaults
from dllm_strategies.discovery import ALLOW_ENV, GROUP, discover, find_strategy, strategy_plugins
from dllm_strategies.errors import ModelOutputError, PluginError, SpecError
from dllm_strategies.options import build_options
from dllm_strategies.plugin import PROCESSES, RUN_HOOKS, declared, plugin_name
from dllm_strategies.spec import SpecItem, format_spec, parse_spec

EXCLUSIVE_HOOKS = ("dllm_schedule", "dllm_forward", "dllm_sample", "dllm_score", "dllm_remask")
CORE = "core"

@attrs.frozen
class Choice:
    """One chosen plugin.

    Attributes:
        item: its spec item (name, raw options, ``!``).
        target: the class or module that serves it.
        options: its typed options (None when it takes none).
        source: where it comes from (``distribution (module:attr)``, or ``python`` for an object).
    """

    item: SpecItem
    target: Any = attrs.field(eq=False)
    options: Any = None
    source: str = "python"

    @property
    def name(self) -> str:
        return self.item.name

    def declared(self, declaration: str) -> Any:
        return declared(self.target, declaration)

    def instantiate(self) -> Any:
        """What one run registers: a fresh instance of a class, the module itself."""
        if not inspect.isclass(self.target):
            return self.target
        try:
            return self.target(self.options) if self.options is not None else self.target()
        except Exception as exc:
            raise SpecError(f"plugin {self.name!r} could not be created: {type(exc).__name__}: {exc}") from exc


@attrs.frozen
class Strategy:
    """A parsed, validated strategy: reusable, immutable, safe to decode with many times.

    Attributes:
        choices: the chosen plugins, in spec order.
        owners: exclusive hook -> name of the plugin that answers it (``core`` for the defaults).
    """

    choices: tuple[Choice, ...] = ()
    owners: Mapping[str, str] = attrs.field(factory=dict, converter=dict)

    @classmethod
    def parse(cls, spec: Any = None) -> Strategy:
        """Check ``spec`` (a string, a list of names / ``(name, options)`` / plugin objects, or a
        Strategy) against the installed plugins; raise :class:`SpecError` naming what is wrong."""
        if isinstance(spec, Strategy):
            return spec
        return cls._checked(_choices(spec))

    @classmethod
    def _checked(cls, choices: list[Choice]) -> Strategy:
        _check_unique(choices)
        _check_conflicts(choices)
        _check_processes(choices)
        strategy = cls(choices=tuple(choices))
        run = strategy.start()  # validates hook names and exclusive owners on a throwaway manager
        return attrs.evolve(strategy, owners=run.owners)

    def with_plugins(self, *objects: Any) -> Strategy:
        """This strategy with plugin objects added after its own (an observer such as
        :class:`dllm_strategies.progress.ProgressObserver`), validated as :meth:`parse` validates
        them: a caller adds one to a strategy the user chose without formatting it back to a spec."""
        return self._checked([*self.choices, *(_from_object(obj) for obj in objects)])

    @property
    def spec(self) -> str:
        return format_spec(c.item for c in self.choices)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.choices]

    def declared(self, declaration: str) -> dict[str, Any]:
        """What each chosen plugin declares for ``declaration`` (``stochastic``, ``block_lengths``...)."""
        return {c.name: c.declared(declaration) for c in self.choices}

    def start(self) -> RunPlugins:
        """One run's plugins: a fresh manager with the core defaults and a fresh instance of each."""
        pm = RunManager(GROUP)
        pm.add_hookspecs(hookspecs)
        pm.register(CoreDefaults(), name=CORE)
        plugins: dict[str, Any] = {}
        # Winners ('!') register last: pluggy calls the latest registration first.
        for choice in sorted(self.choices, key=lambda c: c.item.wins):
            instance = choice.instantiate()
            try:
                pm.register(instance, name=choice.name)
            except ValueError as exc:
                raise SpecError(f"plugin {choice.name!r} could not be registered: {exc}") from exc
            plugins[choice.name] = instance
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise SpecError(f"plugin {getattr(exc, 'plugin_name', '?')!r} implements a hook that does not exist: "
                            f"{exc}. Known hooks: {', '.join(hook_names())}") from exc
        return RunPlugins(strategy=self, pm=pm, plugins=plugins, owners=_owners(pm, self.choices))

    def __str__(self) -> str:
        return self.spec


# class -> attribute name -> its hookimpl options (None: not a hook), read once per class
_HOOK_OPTIONS: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


class RunManager(pluggy.PluginManager):
    """pluggy's manager, reading each plugin class's hook markers once per process instead of at
    every registration: a run registers fresh instances on a fresh manager, and pluggy's static
    attribute lookup over every name of every plugin was most of the cost of starting a run.
    A module plugin, and an attribute an instance sets on itself, are read every time."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if isinstance(plugin, types.ModuleType) or name in getattr(plugin, "__dict__", ()):
            return super().parse_hookimpl_opts(plugin, name)
        known = _HOOK_OPTIONS.setdefault(type(plugin), {})
        if name not in known:
            known[name] = super().parse_hookimpl_opts(plugin, name)
        options = known[name]
        return None if options is None else dict(options)


def _choices(spec: Any) -> list[Choice]:
    entries = [spec] if isinstance(spec, str) or spec is None else list(spec)
    choices: list[Choice] = []
    for entry in entries:
        if entry is None:
            continue
        if isinstance(entry, (str, SpecItem)) or (isinstance(entry, tuple) and len(entry) == 2
                                                  and isinstance(entry[0], str)):
            choices += [_installed(item) for item in parse_spec([entry])]
        else:
            choices.append(_from_object(entry))
    return choices


def _check_unique(choices: list[Choice]) -> None:
    seen: set[str] = set()
    for choice in choices:
        if choice.name in seen:
            raise SpecError(f"plugin {choice.name!r} is chosen twice in {format_spec(c.item for c in choices)!r}; "
                            "give it once")
        seen.add(choice.name)


def _installed(item: SpecItem) -> Choice:
    found = find_strategy(item.name)
    if found is None:
        known = sorted(strategy_plugins())
        close = difflib.get_close_matches(item.name, known, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        allow = f" ({ALLOW_ENV}={os.environ[ALLOW_ENV]!r} limits loading)" if ALLOW_ENV in os.environ else ""
        raise SpecError(f"unknown plugin {item.name!r}.{hint} Known plugins: {', '.join(known) or 'none'}{allow}")
    info, target = found
    options = build_options(item.name, target, item.options)
    return Choice(item=item, target=target, options=options, source=f"{info.distribution} ({info.target})")


def _from_object(obj: Any) -> Choice:
    """A plugin given as a Python object: a class, an instance (rebuilt per run from its class and
    options), or a module of hook functions."""
    if isinstance(obj, Mapping) or isinstance(obj, (int, float, bool, bytes)):
        raise SpecError(f"bad strategy entry {obj!r}: use 'name(opt=value)', (name, {{options}}), "
                        "or a plugin class, instance or module")
    name = plugin_name(obj)
    if isinstance(obj, types.ModuleType):
        target, options = obj, None
    elif inspect.isclass(obj):
        target, options = obj, build_options(name, obj, {})
    else:
        target = type(obj)
        options = getattr(obj, "options", None)
        expected = getattr(target, "Options", None)
        if options is None and expected is not None and attrs.has(expected) and attrs.fields(expected):
            raise SpecError(f"plugin object {name!r} has no 'options'; build it as {target.__name__}(options)")
        if options is not None and expected is not None and not isinstance(options, expected):
            raise SpecError(f"plugin object {name!r}: options must be a {target.__name__}.Options, "
                            f"got {type(options).__name__}")
    hooks = [h for h in RUN_HOOKS if callable(getattr(target, h, None))]
    if not hooks:
        raise SpecError(f"plugin object {name!r} implements no decoding hook ({', '.join(RUN_HOOKS)}); "
                        "mark its methods with @dllm_strategies.hookimpl")
    if discover().get(name):
        raise SpecError(f"plugin object {name!r} has the name of an installed plugin; give it a 'name' attribute")
    return Choice(item=SpecItem(name=name), target=target, options=options, source="python")


def _check_conflicts(choices: list[Choice]) -> None:
    for i, a in enumerate(choices):
        for b in choices[i + 1:]:
            reason = a.declared("conflicts").get(b.name) or b.declared("conflicts").get(a.name)
            if reason:
                raise SpecError(f"plugins {a.name!r} and {b.name!r} cannot be combined: {reason}")


def _check_processes(choices: list[Choice]) -> None:
    """Plugins that serve no diffusion process in common (a uniform-only re-noising rule beside an
    absorbing-only one) could run on no model."""
    common, seen = set(PROCESSES), []
    for choice in choices:
        served = set(choice.declared("processes"))
        if not common & served:
            others = ", ".join(repr(c.name) for c in seen if not set(c.declared("processes")) & served)
            raise SpecError(f"plugin {choice.name!r} serves only the {'/'.join(sorted(served))} process, which "
                            f"{others} cannot serve: no model runs them together (see docs/hooks.md, processes)")
        common &= served
        seen.append(choice)


def _owners(pm: pluggy.PluginManager, choices: Iterable[Choice]) -> dict[str, str]:
    wins = {c.name for c in choices if c.item.wins}
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


@attrs.define
class RunPlugins:
    """The plugins of one run, registered on a manager of their own (``Strategy.start()``).

    Attributes:
        strategy: the :class:`Strategy` it was started from.
        pm: the run's ``pluggy.PluginManager`` (core defaults + chosen plugins).
        plugins: name -> the run's instance (or module).
        owners: exclusive hook -> name of the plugin that answers it (``core`` for defaults).
    """

    strategy: Strategy
    pm: pluggy.PluginManager
    plugins: dict[str, Any]
    owners: dict[str, str]

    @property
    def hook(self):
        return self.pm.hook

    @property
    def spec(self) -> str:
        return self.strategy.spec

    @property
    def items(self) -> list[SpecItem]:
        return [c.item for c in self.strategy.choices]

    def owner(self, hook: str) -> Any:
        return self.pm.get_plugin(self.owners[hook])

    def declared(self, declaration: str) -> dict[str, Any]:
        """What each of this run's plugins declares (instance attributes included)."""
        return {name: declared(plugin, declaration) for name, plugin in self.plugins.items()}

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


def build_strategy(spec: Any = None) -> RunPlugins:
    """Parse ``spec`` and start one run's plugins (``Strategy.parse(spec).start()``)."""
    return Strategy.parse(spec).start()


def hook_names() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("dllm_")]
