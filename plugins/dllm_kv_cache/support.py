"""Which models a KV cache can serve, checked once when a run starts (hook ``dllm_start``).

A cache needs a transformers decoder module (``model.module``) whose forward takes a KV cache
(``cache``, or ``past_key_values`` in releases before the rename) and an explicit 4-D attention
mask, attends bidirectionally
(``is_causal=False``, as LLaDA, Dream and the project's own models are built), keeps full
(not sliding-window) attention in every layer, and runs ``sdpa`` or ``eager`` attention (the
two that take a prepared 4-D mask).  Anything else, a fake model, a ``*ForMaskedLM``, a causal
or sliding-window model, is refused with a :class:`~dllm_strategies.errors.ModelError` that
names the plugin and the model.
"""

from __future__ import annotations

import inspect
from typing import Any

import attrs
import torch

from dllm_strategies.errors import ModelError

MASK_READY_ATTENTION = ("sdpa", "eager")


@attrs.frozen
class CacheableModel:
    """What the cache needs to know about a model that passed :func:`require_cacheable`.

    Attributes:
        config: the module's transformers config (for ``DynamicCache``).
        additive_mask: True when attention adds the mask (``eager``): masks are built as 0 / -inf
            floats instead of booleans.
        shifted: the family's logits are shifted (Dream): position i scores token i+1.
        dtype: the module's floating dtype.
        cache_keyword: the forward's name for the cache argument: ``cache`` where it has one
            (transformers 5.24 deprecates ``past_key_values``, to be removed in 5.40), else
            ``past_key_values``.
    """

    config: Any
    additive_mask: bool
    shifted: bool
    dtype: torch.dtype
    cache_keyword: str = "past_key_values"


def _name(model: Any) -> str:
    return repr(getattr(model, "name", "") or type(model).__name__)


def _innermost(model: Any) -> Any:
    """The model behind the wrappers that meter or record its calls (they keep it as ``.model``)."""
    while getattr(model, "model", None) is not None and not isinstance(model, torch.nn.Module):
        model = model.model
    return model


def require_cacheable(plugin: str, model: Any) -> CacheableModel:
    """Check that ``plugin`` can keep a KV cache for ``model``; raise :class:`ModelError` otherwise."""
    name = _name(model)
    if getattr(model, "exact_cache", None) is not None:  # block-causal, DiffusionGemma: dllm_strategies.blocks
        raise ModelError(f"plugin {plugin!r} approximates a KV cache, but model {name} is block-autoregressive and "
                         f"keeps an exact cache of its own (finished blocks are never recomputed); drop {plugin!r}")
    module = getattr(model, "module", None)
    if not isinstance(module, torch.nn.Module) or getattr(module, "config", None) is None:
        raise ModelError(
            f"plugin {plugin!r} needs a transformers decoder whose forward takes a KV cache (cache / past_key_values), "
            f"but model {name} ({type(_innermost(model)).__name__}) has no such module; a KV cache works only "
            f"with LLaDA, Dream or bidirectional *ForCausalLM models: drop {plugin!r} from the strategy for this model"
        )
    cls = type(module).__name__
    parameters = inspect.signature(module.forward).parameters
    keyword = "cache" if "cache" in parameters else "past_key_values"
    takes_cache = keyword in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "ForMaskedLM" in cls or not takes_cache:
        raise ModelError(
            f"plugin {plugin!r} cannot cache keys and values of model {name}: {cls}.forward takes no KV cache "
            f"(cache / past_key_values; encoder models such as *ForMaskedLM have none); drop {plugin!r} from the "
            "strategy for this model"
        )
    config = module.config
    if getattr(config, "is_causal", True) is not False:
        raise ModelError(
            f"plugin {plugin!r} needs a bidirectional model, but {cls} of model {name} is causal "
            f"(config.is_causal is not False); load it as a diffusion model (is_causal=False) or drop {plugin!r}"
        )
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in MASK_READY_ATTENTION:
        raise ModelError(
            f"plugin {plugin!r} passes a prepared 4-D attention mask, which attention implementation "
            f"{attention!r} of model {name} does not take; load the model with attn_implementation='sdpa' "
            "(or 'eager')"
        )
    sliding = getattr(config, "use_sliding_window", False) or any(
        kind != "full_attention" for kind in (getattr(config, "layer_types", None) or ()))
    if sliding:
        raise ModelError(
            f"plugin {plugin!r} keeps every position's keys, but model {name} has sliding-window or non-attention "
            f"layers (layer_types={getattr(config, 'layer_types', None)!r}); drop {plugin!r} for this model"
        )
    family = getattr(model, "family", None)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return CacheableModel(config=config, additive_mask=attention == "eager",
                          shifted=bool(getattr(family, "shifted", False)), dtype=dtype, cache_keyword=keyword)
