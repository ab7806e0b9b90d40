"""dllm-strategies: every way of decoding a diffusion LLM is a plugin.

    from dllm_strategies import decode, load_model
    model = load_model("default")
    result = decode(model, ["Tom has 3 apples ..."], strategy="threshold(tau=0.9)", chat=True)

Plugins implement the hooks of :mod:`dllm_strategies.hookspecs` with ``@dllm_strategies.hookimpl``
and are found through the entry-point group ``dllm_strategies``.
"""

from dllm_strategies.decode import decode, encode_prompts
from dllm_strategies.errors import (
    ConfigError, DllmError, ModelError, ModelOutputError, PluginError, SpecError, StepLimitError,
)
from dllm_strategies.hookspecs import hookimpl, hookspec
from dllm_strategies.models import DiffusionModel, load_model
from dllm_strategies.plugin import Plugin
from dllm_strategies.spec import SpecItem, parse_spec
from dllm_strategies.state import Commit, DecodeConfig, DecodeResult, DecodeState, Logits, Plan, Proposal
from dllm_strategies.strategy import RunPlugins, Strategy, build_strategy

__all__ = [
    "Commit", "ConfigError", "DecodeConfig", "DecodeResult", "DecodeState", "DiffusionModel", "DllmError",
    "Logits", "ModelError", "ModelOutputError", "Plan", "Plugin", "PluginError", "Proposal", "RunPlugins", "SpecError",
    "SpecItem", "StepLimitError", "Strategy", "build_strategy", "decode", "encode_prompts", "hookimpl",
    "hookspec", "load_model", "parse_spec",
]
__version__ = "0.1.0"
