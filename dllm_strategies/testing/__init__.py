"""Tools for testing strategies and plugins (public API for plugin authors): fake models,
hypothesis strategies for logits and decode shapes, the invariant checks, and a stateful
machine.  See docs/testing-a-plugin.md."""

from dllm_strategies.testing.fakes import FakeModel, RecordingModel, ScriptedLogits
from dllm_strategies.testing.invariants import (
    CheckedRun, InvariantViolation, check_strategy, check_strategy_property, checked_decode, checked_run, kit_model,
    decode_shapes, decoder_machine, fake_models, logit_tables,
)

__all__ = [
    "CheckedRun", "FakeModel", "InvariantViolation", "RecordingModel", "ScriptedLogits", "check_strategy",
    "check_strategy_property", "checked_decode", "checked_run", "decode_shapes", "decoder_machine", "fake_models",
    "kit_model",
    "logit_tables",
]
