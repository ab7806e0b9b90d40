"""The project's error types.  Everything the library raises on bad input is a
:class:`DllmError`; each message names the thing at fault and how to fix it."""

from __future__ import annotations


class DllmError(Exception):
    """Base of every error dllm-strategies raises on purpose."""


class SpecError(DllmError, ValueError):
    """A strategy spec that cannot be used: syntax, unknown plugin, bad option name or value,
    or a combination of plugins that cannot work together."""


class ConfigError(DllmError, ValueError):
    """A decode request that cannot be honoured: lengths, steps, prompts."""


class ModelError(DllmError):
    """A model that cannot be loaded or used (unknown family, missing mask token...)."""


class ModelOutputError(DllmError):
    """A model returned unusable logits (NaN/inf, wrong shape or vocabulary size)."""


class PluginError(DllmError):
    """A plugin raised, or broke the decoder's contract, inside a hook.

    Attributes:
        plugin: the plugin's name in the strategy.
        hook: the hook it was running.
    """

    def __init__(self, message: str, *, plugin: str, hook: str):
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


class StepLimitError(DllmError):
    """Decoding hit its step cap with masked positions left (only possible with a
    revocable plugin, which may un-commit tokens)."""
