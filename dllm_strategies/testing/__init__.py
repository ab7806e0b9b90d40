"""Tools for testing strategies and plugins: fake models, tiny real models and (issue 7)
the invariant kit.  Public API for plugin authors."""

from dllm_strategies.testing.fakes import FakeModel, ScriptedLogits

__all__ = ["FakeModel", "ScriptedLogits"]
