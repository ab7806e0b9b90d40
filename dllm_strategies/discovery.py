"""What is installed: plugins found through the entry-point group ``dllm_strategies``.

Every plugin, built-in or third-party, is found the same way.  An entry point that names a
**class**, or a **module** implementing a per-run hook, is a *strategy plugin* usable in a spec
(``threshold(tau=0.9)``).  An entry point whose target implements ``dllm_models``,
``dllm_commands`` or ``dllm_tasks`` is also a *registration plugin*.

Reading the metadata imports nothing.  A strategy plugin is imported only when a spec names it;
the registration hooks are consulted (importing every entry point) only when a registered name is
asked for: a model name, a task, or a command the CLI does not know itself.  A plugin that fails
to import is skipped there, reported by :func:`broken` and by ``dllm-strategies plugins``, and
raises only when a spec names it.

``DLLM_STRATEGIES_PLUGINS=dist-a,dist-b`` limits loading to those distributions (empty: none;
unset: all).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import attrs
import pluggy

from dllm_strategies import hookspecs
from dllm_strategies.errors import ModelError, SpecError
from dllm_strategies.plugin import REGISTRATION_HOOKS, implemented_hooks, is_strategy

GROUP = hookspecs.PROJECT
ALLOW_ENV = "DLLM_STRATEGIES_PLUGINS"


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
        """Import the target; a failure is a :class:`SpecError` naming the distribution."""
        try:
            return self.entry_point.load()
        except Exception as exc:
            raise SpecError(
                f"plugin {self.name!r} (from distribution {self.distribution}) failed to import {self.target}: "
                f"{type(exc).__name__}: {exc}; fix or uninstall {self.distribution}"
            ) from exc


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
    allowed = None if allow is None else {_normal(name) for name in allow.split(",") if name.strip()}
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


def unique(name: str, infos: list[PluginInfo]) -> PluginInfo:
    if len(infos) > 1:
        sources = ", ".join(f"{i.distribution} ({i.target})" for i in infos)
        raise SpecError(f"plugin name {name!r} is declared by several distributions: {sources}; "
                        f"limit loading with {ALLOW_ENV}=<distribution>")
    return infos[0]


def _loaded() -> tuple[list[tuple[PluginInfo, Any]], list[tuple[PluginInfo, SpecError]]]:
    return _load_all(tuple(sys.path), os.environ.get(ALLOW_ENV))


@functools.lru_cache(maxsize=8)
def _load_all(path: tuple[str, ...], allow: str | None):
    loaded, failed = [], []
    for _name, infos in sorted(discover().items()):
        for info in infos:
            try:
                loaded.append((info, info.load()))
            except SpecError as exc:
                failed.append((info, exc))
    return loaded, failed


def broken() -> list[tuple[PluginInfo, SpecError]]:
    """Installed plugins whose import fails, with the error (each named by its distribution)."""
    return _loaded()[1]


def strategy_plugins() -> dict[str, tuple[PluginInfo, Any]]:
    """Installed strategy plugins (importing each; broken ones are left out, see :func:`broken`):
    name -> (info, class or module)."""
    out = {}
    for info, target in _loaded()[0]:
        if is_strategy(target) and len(discover().get(info.name, ())) == 1:
            out[info.name] = (info, target)
    return out


def find_strategy(name: str) -> tuple[PluginInfo, Any] | None:
    """The installed strategy plugin called ``name`` (importing only it), or None if no entry point
    has that name.  A target that fails to import, or is not a strategy, raises :class:`SpecError`."""
    infos = discover().get(name)
    if not infos:
        return None
    info = unique(name, infos)
    target = info.load()
    if not is_strategy(target):
        raise SpecError(f"{name!r} (from {info.distribution}) registers models, tasks or commands; "
                        "it is not a strategy plugin")
    return info, target


def registration_manager() -> pluggy.PluginManager:
    """A manager holding every installed plugin that implements a registration hook."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    for info, target in _loaded()[0]:
        if inspect.isclass(target):
            static = [h for h in REGISTRATION_HOOKS
                      if isinstance(inspect.getattr_static(target, h, None), (staticmethod, classmethod))]
            if not static:
                continue
        elif not any(h in REGISTRATION_HOOKS for h in implemented_hooks(target)):
            continue
        pm.register(target, name=f"{info.distribution}:{info.name}")
    pm.check_pending()
    return pm


def _broken_note() -> str:
    failed = broken()
    if not failed:
        return ""
    return " (plugins that failed to import: " + ", ".join(
        f"{info.name} from {info.distribution}" for info, _ in failed) + ")"


def installed_models() -> dict[str, dict[str, Any]]:
    """Named models registered through ``dllm_models``: name -> {path, strategy, block_length,
    description, source}."""
    models: dict[str, dict[str, Any]] = {}
    for impl in reversed(registration_manager().hook.dllm_models.get_hookimpls()):
        def register(name: str, path: str | Path, *, strategy: str | None = None, block_length: int | None = None,
                     description: str = "", _source: str = impl.plugin_name) -> None:
            if name in models:
                raise ModelError(f"model name {name!r} registered twice: by {models[name]['source']} and {_source}")
            models[name] = {"path": Path(path), "strategy": strategy, "block_length": block_length,
                            "description": description, "source": _source}

        impl.function(register=register)
    return models


def installed_tasks() -> dict[str, Any]:
    """Tasks registered through ``dllm_tasks``: name -> task object (see the hook's contract)."""
    tasks: dict[str, Any] = {}
    for impl in reversed(registration_manager().hook.dllm_tasks.get_hookimpls()):
        def register(name: str, task: Any, _source: str = impl.plugin_name) -> None:
            if name in tasks:
                raise SpecError(f"task name {name!r} registered twice (again by {_source})")
            tasks[name] = task

        impl.function(register=register)
    return tasks


def task(name: str) -> Any:
    """The registered task ``name``; an unknown name lists the registered ones."""
    tasks = installed_tasks()
    if name not in tasks:
        raise SpecError(f"no task {name!r} is registered; registered: {', '.join(sorted(tasks)) or 'none'}"
                        f"{_broken_note()}")
    return tasks[name]


def model_entry(name: str) -> dict[str, Any] | None:
    """The registration of model ``name``, or None."""
    return installed_models().get(name)


def unknown_model_note() -> str:
    """For a 'cannot find model' error: the registered names (and plugins that failed to load)."""
    return f"registered names: {', '.join(sorted(installed_models())) or 'none'}{_broken_note()}"


def add_commands(subparsers) -> None:
    """Let every installed plugin add its subcommands."""
    registration_manager().hook.dllm_commands(subparsers=subparsers)


DEFAULT_BLOCK_LENGTH = 32


@attrs.frozen
class Decoding:
    """How to decode with a model: a strategy spec (empty: the core defaults) and a block length."""

    strategy: str
    block_length: int


def recommended_decoding(model: str | None, *, strategy: str | None = None, block_length: int | None = None,
                         gen_length: int | None = None) -> Decoding:
    """The user's ``strategy`` / ``block_length`` where given, else what the registered ``model``
    recommends, else the core defaults (LLaDA low-confidence in blocks of 32, or of the whole
    generation when it is shorter).  A path or hub id has no recommendation (no plugin is imported)."""
    entry = (installed_models().get(model) if isinstance(model, str) and "/" not in model
             and not model.startswith((".", "~")) else None) or {}
    if block_length is None:
        block_length = entry.get("block_length") or DEFAULT_BLOCK_LENGTH
        if gen_length is not None:
            block_length = min(block_length, gen_length)
    return Decoding(strategy=strategy if strategy is not None else (entry.get("strategy") or ""),
                    block_length=block_length)


def loaded_decoding(decoding: Decoding, model: Any, *, strategy: str | None = None,
                    block_length: int | None = None) -> Decoding:
    """``decoding`` (from :func:`recommended_decoding`) once ``model`` is loaded: where neither the
    user (``strategy`` / ``block_length``) nor a registration chose, what the model recommends for
    itself (``model.recommended_strategy``: DiffusionGemma's generation config, a block-diffusion
    model's authors' rule) and its own block (``model.block_length``: a canvas or attention block)."""
    own_strategy = getattr(model, "recommended_strategy", None)
    own_block = getattr(model, "block_length", None)
    chosen = strategy is not None or bool(decoding.strategy)
    return Decoding(strategy=decoding.strategy if chosen or not own_strategy else own_strategy,
                    block_length=decoding.block_length if block_length is not None or own_block is None
                    else own_block)
