"""The base of a strategy plugin and the facts a plugin declares.

A strategy plugin is a class (one fresh instance per run, built from its typed ``Options``), an
instance of one (the class and the instance's options are used to build a fresh one per run), or
a module of ``@hookimpl`` functions (stateless: the module itself serves every run).  Whatever its
form, the core, the spec parser and the invariant kit read what it declares through
:func:`declared`, with the defaults of :class:`Plugin`.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping
from typing import Any

import attrs

from dllm_strategies import hookspecs

# Hooks called on a run's chosen plugins (the registration hooks are called on installed ones).
RUN_HOOKS = ("dllm_start", "dllm_schedule", "dllm_forward", "dllm_sample", "dllm_score", "dllm_remask",
             "dllm_truncate", "dllm_should_stop", "dllm_after_step")
REGISTRATION_HOOKS = ("dllm_models", "dllm_commands", "dllm_tasks")


# The diffusion processes the decode loop knows (dllm_strategies.uniform).
PROCESSES = ("absorbing", "uniform")


class Plugin:
    """Convenient base of a strategy plugin (any class with the same shape works).

    Attributes:
        Options: an ``attrs`` class of typed, validated options (none by default).
        revocable: its ``dllm_remask`` may un-commit tokens (``Commit.revoke``).
        stochastic: its choices are random (seeded by ``config.seed``), so a row decoded in a
            batch may differ from the same row decoded alone.
        batch_invariant: a greedy row's tokens, steps and NFE do not depend on the rest of its
            batch.  Every first-party plugin promises it; a plugin that genuinely cannot sets it
            False, and ``dllm-strategies plugins``, the invariant kit and the docs say so.
        conflicts: ``{plugin name: reason}`` of plugins it cannot be combined with.
        supports_fake_models: False when it needs a real transformers model (a KV cache); the
            invariant kit then runs it on a tiny real model.
        block_lengths: the only block lengths it works with, or None for any (an instance
            attribute when it depends on the options: a learned filter reads blocks of its width).
        empty_steps: its ``dllm_schedule`` may plan a step that commits nothing (budget 0) for a
            row before the row's last declared step (Dream's schedule); the core then forces no
            commit for that row.
        processes: the diffusion processes it can serve (``absorbing``: masked diffusion;
            ``uniform``: DiffusionGemma's re-decided random tokens); a spec whose plugins share no
            process, or a model whose process a chosen plugin does not list, is refused.
    """

    @attrs.frozen
    class Options:
        pass

    revocable: bool = False
    stochastic: bool = False
    batch_invariant: bool = True
    conflicts: Mapping[str, str] = {}
    supports_fake_models: bool = True
    block_lengths: tuple[int, ...] | None = None
    empty_steps: bool = False
    processes: tuple[str, ...] = ("absorbing",)

    def __init__(self, options: Any = None):
        self.options = options if options is not None else type(self).Options()


DECLARATIONS = ("revocable", "stochastic", "batch_invariant", "conflicts", "supports_fake_models", "block_lengths",
                "empty_steps", "processes")


def declared(plugin: Any, name: str) -> Any:
    """What ``plugin`` (a class, an instance or a module) declares for ``name``, else the
    :class:`Plugin` default."""
    if name not in DECLARATIONS:
        raise AttributeError(f"{name!r} is not a plugin declaration; known: {', '.join(DECLARATIONS)}")
    value = getattr(plugin, name, getattr(Plugin, name))
    return dict(value or {}) if name == "conflicts" else value


def implemented_hooks(plugin: Any) -> list[str]:
    """The hooks ``plugin`` implements (``@hookimpl``-marked members named after a hook)."""
    marker = f"{hookspecs.PROJECT}_impl"
    return sorted(name for name in (*RUN_HOOKS, *REGISTRATION_HOOKS)
                  if hasattr(getattr(plugin, name, None), marker))


def is_strategy(plugin: Any) -> bool:
    """True for what a spec may name: a class, or a module implementing a per-run hook."""
    if inspect.isclass(plugin):
        return True
    return isinstance(plugin, types.ModuleType) and any(h in RUN_HOOKS for h in implemented_hooks(plugin))


def plugin_name(plugin: Any) -> str:
    """The name a plugin object given in Python (not by entry point) goes by in a run:
    its ``name`` attribute, else its class (or module) name."""
    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__.rsplit(".", 1)[-1]
    return (plugin if inspect.isclass(plugin) else type(plugin)).__name__
