"""Native loading of LLaDA and Dream checkpoints onto transformers' own classes.

The released checkpoints (LLaDA-8B-Instruct/Base, LLaDA-1.5, dParallel-LLaDA; Dream-v0,
Dream-Coder, DiffuCoder, dParallel-Dream) ship their own modelling code, which breaks on
transformers 5.  Their architectures are plain Llama / Qwen2 decoders run without a causal
mask, so we build ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` with ``is_causal=False`` from
the checkpoint's ``config.json`` and load its safetensors under the transformers names.
No remote code is imported.

LLaDA (``model_type: "llada"``, the authors' ``modeling_llada.py``, ``block_type: "llama"``):

==============================================  ==========================================
LLaDA name (``model.transformer.`` prefix)      transformers Llama name
==============================================  ==========================================
``wte.weight``                                  ``model.embed_tokens.weight``
``blocks.N.attn_norm.weight``                   ``model.layers.N.input_layernorm.weight``
``blocks.N.{q,k,v}_proj.weight``                ``model.layers.N.self_attn.{q,k,v}_proj.weight``
``blocks.N.attn_out.weight``                    ``model.layers.N.self_attn.o_proj.weight``
``blocks.N.ff_norm.weight``                     ``model.layers.N.post_attention_layernorm.weight``
``blocks.N.ff_proj.weight`` (SiLU gate)         ``model.layers.N.mlp.gate_proj.weight``
``blocks.N.up_proj.weight``                     ``model.layers.N.mlp.up_proj.weight``
``blocks.N.ff_out.weight``                      ``model.layers.N.mlp.down_proj.weight``
``ln_f.weight``                                 ``model.norm.weight``
``ff_out.weight`` (when ``weight_tying`` false)  ``lm_head.weight``
==============================================  ==========================================

Config: ``d_model`` -> hidden size, ``n_heads``, ``n_kv_heads`` (or ``multi_query_attention``),
``n_layers``, ``mlp_hidden_size`` (else ``mlp_ratio * d_model``), ``rms_norm_eps``,
``rope_theta``, ``max_sequence_length``, ``weight_tying``.  The embedding and head have
``embedding_size`` rows (LLaDA pads the table beyond ``vocab_size`` when they differ), so the
logits are ``embedding_size`` wide, as in the authors' code.  LLaDA's RoPE uses positions
``0..T-1`` and the rotate-half layout, like transformers' Llama.  Options the Llama class cannot
express (ALiBi, no RoPE, QK layer norm, biases, LayerNorm, ``scale_logits``, ``input_emb_norm``,
block groups, other block types or activations, mixture-of-experts) raise :class:`ModelError`.

Dream (``model_type: "Dream"``): a Qwen2 (q/k/v biases, no other biases) whose tensor names
already match ``Qwen2ForCausalLM`` (``attention_bias: false``, written by some conversions of
bias-free checkpoints to Dream, drops the q/k/v biases). Sliding-window attention
(``use_sliding_window: true``) is refused: Dream's own code ignores it outside FlashAttention-2.
``rope_scaling`` null or ``{"type": "default"}`` means plain RoPE. Its logits are shifted by one
position; :class:`~dllm_strategies.models.adapter.DiffusionModel` re-aligns them, this module
only builds the network.

Loading is memory-lean: the module is built on the meta device, then every checkpoint tensor is
read once (single file or sharded with ``model.safetensors.index.json``), cast, moved to the
target device and assigned in place of its meta parameter; rotary buffers are then computed on
the target device. On CPU, when the checkpoint already has the requested dtype, safetensors
hands out tensors backed by a private (copy-on-write) memory map of the files: no copy at all,
pages becoming resident as they are used. Every checkpoint tensor must be used and every
parameter filled, else :class:`ModelError` names the keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dllm_strategies.errors import ModelError
from dllm_strategies.models.families import Family

__all__ = ["load_native", "load_tokenizer", "load_weights", "llada_config", "dream_config", "llada_name",
           "llada_source_name", "checkpoint_files"]

# Tensors some checkpoints carry that are recomputed, never loaded.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


# --------------------------------------------------------------------------- LLaDA

# Defaults of the authors' ModelConfig (configuration_llada.py) for keys a config.json omits.
_LLADA_DEFAULTS: dict[str, Any] = {
    "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4, "mlp_hidden_size": None,
    "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1, "alibi": False,
    "rope": False, "multi_query_attention": None, "attention_layer_norm": False, "input_emb_norm": False,
    "layer_norm_type": "default", "layer_norm_with_affine": True, "rms_norm_eps": 1e-5,
    "max_sequence_length": 1024, "rope_theta": 10000.0, "include_qkv_bias": False, "include_bias": False,
    "bias_for_layer_norm": None, "scale_logits": False, "vocab_size": 50257, "embedding_size": 50304,
    "weight_tying": True,
}

# (key, supported value): anything else is an architecture the Llama class cannot express.
_LLADA_REQUIRED: tuple[tuple[str, Any, str], ...] = (
    ("block_type", "llama", "only LLaDA's 'llama' block (separate q/k/v, gated MLP) maps onto Llama"),
    ("activation_type", "silu", "the Llama MLP computes silu(ff_proj(x)) * up_proj(x)"),
    ("block_group_size", 1, "grouped blocks are stored under other tensor names"),
    ("alibi", False, "ALiBi position biases are not supported"),
    ("rope", True, "only rotary position embeddings are supported"),
    ("attention_layer_norm", False, "query/key layer norm is not supported"),
    ("include_bias", False, "linear-layer biases are not supported"),
    ("include_qkv_bias", False, "q/k/v biases are not supported"),
    ("layer_norm_type", "rms", "only RMSNorm is supported"),
    ("layer_norm_with_affine", True, "norms without a weight are not supported"),
    ("scale_logits", False, "logit scaling is not supported"),
    ("input_emb_norm", False, "embedding scaling by sqrt(d_model) is not supported"),
)


def _moe_keys(config: dict[str, Any]) -> list[str]:
    """Config keys announcing mixture-of-experts layers (set to something truthy)."""
    found = []
    for key, value in config.items():
        lowered = key.lower()
        if ("expert" in lowered or re.search(r"(^|_)moe(_|$)", lowered)) and value not in (None, False, 0, 1, [], {}):
            found.append(f"{key}={value!r}")
    return found


def _llada_value(config: dict[str, Any], key: str) -> Any:
    return config[key] if key in config else _LLADA_DEFAULTS.get(key)


def llada_config(config: dict[str, Any], *, dtype: torch.dtype | None = None):
    """A ``LlamaConfig`` (``is_causal=False``) equivalent to a LLaDA ``config.json``.

    Raises:
        ModelError: the config uses an option the Llama class cannot express.
    """
    from transformers import LlamaConfig

    get = lambda key: _llada_value(config, key)  # noqa: E731
    for key, supported, why in _LLADA_REQUIRED:
        value = get(key)
        if value != supported:
            raise ModelError(f"LLaDA config {key}={value!r} is not supported natively (needs {supported!r}): {why}")
    if get("bias_for_layer_norm"):
        raise ModelError("LLaDA config bias_for_layer_norm=True is not supported natively: RMSNorm has no bias")
    moe = _moe_keys(config)
    if moe:
        raise ModelError(f"LLaDA config has mixture-of-experts settings ({', '.join(moe)}); "
                         "only dense LLaDA loads natively")
    if config.get("rope_scaling"):
        raise ModelError(f"LLaDA config rope_scaling={config['rope_scaling']!r} is not supported natively")
    d_model, n_heads = int(get("d_model") or 768), int(get("n_heads"))
    if d_model % n_heads:
        raise ModelError(f"LLaDA config d_model={d_model} is not divisible by n_heads={n_heads}")
    n_kv, mqa = get("n_kv_heads"), get("multi_query_attention")
    if n_kv is None:
        n_kv = 1 if mqa else n_heads
    elif mqa is not None and n_kv != (1 if mqa else n_heads):
        raise ModelError(f"LLaDA config sets both n_kv_heads={n_kv} and multi_query_attention={mqa}")
    n_kv = int(n_kv)
    if n_kv <= 0 or n_heads % n_kv:
        raise ModelError(f"LLaDA config n_kv_heads={n_kv} does not divide n_heads={n_heads}")
    vocab = int(get("vocab_size"))
    rows = int(get("embedding_size") or vocab)
    if rows < vocab:
        raise ModelError(f"LLaDA config embedding_size={rows} is smaller than vocab_size={vocab}")
    hidden = get("mlp_hidden_size")
    hidden = int(hidden) if hidden is not None else int(get("mlp_ratio")) * d_model
    pad = config.get("pad_token_id")
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return LlamaConfig(
        vocab_size=rows,  # logits as wide as the (possibly padded) embedding table
        hidden_size=d_model,
        intermediate_size=hidden,
        num_hidden_layers=int(get("n_layers")),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=d_model // n_heads,
        hidden_act="silu",
        max_position_embeddings=int(get("max_sequence_length")),
        rms_norm_eps=float(get("rms_norm_eps")),
        rope_parameters={"rope_type": "default", "rope_theta": float(get("rope_theta"))},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=bool(get("weight_tying")),
        pad_token_id=pad if isinstance(pad, int) and 0 <= pad < rows else None,
        bos_token_id=None,
        eos_token_id=config.get("eos_token_id"),
        use_cache=False,
        is_causal=False,
        **kwargs,
    )


_LLADA_BLOCK = {
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",  # LLaDA: act(ff_proj(x)) * up_proj(x)
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
_LLADA_TOP = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
_LLADA_BLOCK_RE = re.compile(r"^model\.transformer\.blocks\.(\d+)\.([a-z_]+)\.weight$")


def llada_name(key: str) -> str | None:
    """The Llama parameter name of a LLaDA checkpoint tensor, or None when it has none."""
    if key in _LLADA_TOP:
        return _LLADA_TOP[key]
    match = _LLADA_BLOCK_RE.match(key)
    if match and match.group(2) in _LLADA_BLOCK:
        return f"model.layers.{match.group(1)}.{_LLADA_BLOCK[match.group(2)]}.weight"
    return None


_LLADA_TOP_BACK = {v: k for k, v in _LLADA_TOP.items()}
_LLADA_BLOCK_BACK = {v: k for k, v in _LLADA_BLOCK.items()}
_LLAMA_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def llada_source_name(name: str) -> str:
    """The LLaDA checkpoint name of a Llama parameter (inverse of :func:`llada_name`)."""
    if name in _LLADA_TOP_BACK:
        return _LLADA_TOP_BACK[name]
    match = _LLAMA_LAYER_RE.match(name)
    if match and match.group(2) in _LLADA_BLOCK_BACK:
        return f"model.transformer.blocks.{match.group(1)}.{_LLADA_BLOCK_BACK[match.group(2)]}.weight"
    return name


# --------------------------------------------------------------------------- Dream

def dream_config(config: dict[str, Any], *, dtype: torch.dtype | None = None):
    """A ``Qwen2Config`` (``is_causal=False``, full attention) equivalent to a Dream ``config.json``.

    Raises:
        ModelError: the config uses an option the Qwen2 class cannot express.
    """
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config.get(key), int):
            raise ModelError(f"Dream config {key}={config.get(key)!r}: expected an integer")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    if hidden % heads:
        raise ModelError(f"Dream config hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        raise ModelError(f"Dream config head_dim={head_dim} differs from hidden_size/num_attention_heads="
                         f"{hidden // heads}; Dream's attention uses the latter")
    kv = config.get("num_key_value_heads") or heads
    if heads % kv:
        raise ModelError(f"Dream config num_key_value_heads={kv} does not divide num_attention_heads={heads}")
    for key in ("use_mrope", "use_sliding_window", "mlp_bias"):
        if config.get(key):
            raise ModelError(f"Dream config {key}={config[key]!r} is not supported natively")
    moe = _moe_keys(config)
    if moe:
        raise ModelError(f"Dream config has mixture-of-experts settings ({', '.join(moe)}); "
                         "only dense Dream loads natively")
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(scaling, dict):
        raise ModelError(f"Dream config rope_scaling={scaling!r}: expected null or an object")
    rope = {k: v for k, v in scaling.items() if k != "type"}
    rope["rope_type"] = scaling.get("rope_type", scaling.get("type")) or "default"
    rope.setdefault("rope_theta", float(config.get("rope_theta", 10000.0)))
    if rope["rope_type"] != "default" and rope["rope_type"] not in ROPE_INIT_FUNCTIONS:
        raise ModelError(f"Dream config rope_scaling type {rope['rope_type']!r} is not supported; known: "
                         f"default, {', '.join(sorted(ROPE_INIT_FUNCTIONS))}")
    layers = config["num_hidden_layers"]
    pad = config.get("pad_token_id")
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return Qwen2Config(
        vocab_size=config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=int(config.get("max_position_embeddings") or 32768),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_parameters=rope,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        use_sliding_window=False,
        sliding_window=None,
        layer_types=["full_attention"] * layers,
        attention_dropout=float(config.get("attention_dropout") or 0.0),
        pad_token_id=pad if isinstance(pad, int) and 0 <= pad < config["vocab_size"] else None,
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        use_cache=False,
        is_causal=False,
        **kwargs,
    )


def _dream_name(key: str) -> str | None:
    return key


def _identity(name: str) -> str:
    return name


# --------------------------------------------------------------------------- loading

def checkpoint_files(directory: Path) -> dict[str, list[str]]:
    """``{file name: [tensor names]}`` of a checkpoint's safetensors, sharded or not.

    Raises:
        ModelError: no safetensors (``.bin`` checkpoints are not read), or a broken index.
    """
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{index}: not a safetensors index ({type(exc).__name__}: {exc})") from exc
        files: dict[str, list[str]] = {}
        for key, name in weight_map.items():
            files.setdefault(name, []).append(key)
        for name, keys in files.items():
            path = directory / name
            if not path.is_file():
                raise ModelError(f"{index} lists shard {name}, which is missing from {directory}")
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                present = set(handle.keys())
            absent = sorted(set(keys) - present)
            if absent:
                raise ModelError(f"shard {name} lacks tensors its index assigns to it: {_names(absent)}")
            extra = sorted(present - set(keys))
            if extra:
                raise ModelError(f"shard {name} holds tensors its index does not list: {_names(extra)}")
        return files
    names = sorted(p.name for p in directory.glob("*.safetensors"))
    if not names:
        others = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" (found {', '.join(others)}: convert them to safetensors)" if others else ""
        raise ModelError(f"{directory} has no *.safetensors weights{hint}")
    if len(names) > 1 and "model.safetensors" not in names:
        raise ModelError(f"{directory} has several safetensors files ({', '.join(names)}) but no "
                         "model.safetensors.index.json saying which belong to the model")
    name = "model.safetensors" if "model.safetensors" in names else names[0]
    with safe_open(str(directory / name), framework="pt", device="cpu") as handle:
        return {name: list(handle.keys())}


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _set_parameter(module: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, leaf, torch.nn.Parameter(tensor, requires_grad=False))


def _head_name(module: torch.nn.Module) -> str | None:
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if head is None:
        return None
    for name, sub in module.named_modules():
        if sub is head:
            return f"{name}.weight"
    return None


def _reset_rotary(module: torch.nn.Module, device: torch.device) -> None:
    """Rebuild every rotary-embedding submodule (non-persistent buffers) on ``device``."""
    for name, sub in list(module.named_modules()):
        if "inv_freq" not in dict(sub.named_buffers(recurse=False)):
            continue
        with torch.device(device):
            fresh = type(sub)(config=sub.config)
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, leaf, fresh)


def _load_weights(module: torch.nn.Module, directory: Path, rename: Callable[[str], str | None],
                  source_name: Callable[[str], str], *, dtype: torch.dtype, device: torch.device, tied: bool,
                  label: str) -> None:
    from safetensors import safe_open

    files = checkpoint_files(directory)
    params = dict(module.named_parameters(remove_duplicate=False))
    head = _head_name(module) if tied else None
    embed_name = None
    if tied:
        embed = module.get_input_embeddings()
        embed_name = next(f"{n}.weight" for n, s in module.named_modules() if s is embed)
        params.pop(head, None)

    # Plan everything (names, shapes) before reading any tensor, so errors are cheap.
    plan: dict[str, list[tuple[str, str]]] = {}
    unexpected, seen, tied_head_keys = [], {}, []
    for file_name, keys in files.items():
        with safe_open(str(directory / file_name), framework="pt", device="cpu") as handle:
            for key in keys:
                if _IGNORED.search(key):
                    continue
                target = rename(key)
                if tied and target is not None and target == head:
                    tied_head_keys.append((file_name, key))
                    continue
                if target is None or target not in params:
                    unexpected.append(key)
                    continue
                if target in seen:
                    raise ModelError(f"{label}: tensors {seen[target]} and {key} both map to {target}")
                seen[target] = key
                shape = tuple(handle.get_slice(key).get_shape())
                if shape != tuple(params[target].shape):
                    raise ModelError(f"{label}: tensor {key} has shape {list(shape)} but the config implies "
                                     f"{list(params[target].shape)} for {target}")
                plan.setdefault(file_name, []).append((key, target))
    missing = sorted(source_name(name) for name in params if name not in seen)
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing weights (expected from the config, absent from the checkpoint): "
                         f"{_names(missing)}")
        if unexpected:
            parts.append(f"unexpected checkpoint tensors (not part of the {label} architecture): "
                         f"{_names(sorted(unexpected))}")
        raise ModelError(f"{label} checkpoint {directory} does not match its config: " + "; ".join(parts))

    for file_name, items in plan.items():
        with safe_open(str(directory / file_name), framework="pt", device="cpu") as handle:
            for key, target in items:
                tensor = handle.get_tensor(key)
                if not tensor.is_floating_point():
                    raise ModelError(f"{label}: tensor {key} has dtype {tensor.dtype}; quantized checkpoints "
                                     "are not supported natively")
                _set_parameter(module, target, tensor.to(device=device, dtype=dtype))
                del tensor
    if tied:
        embedding = module.get_parameter(embed_name)
        for file_name, key in tied_head_keys:
            with safe_open(str(directory / file_name), framework="pt", device="cpu") as handle:
                stored = handle.get_tensor(key).to(device=device, dtype=dtype)
            if stored.shape != embedding.shape or not torch.equal(stored, embedding):
                raise ModelError(f"{label}: the config ties the output head to the embeddings, but the "
                                 f"checkpoint's {key} differs from them; set the tying flag to false")
        parent_name, _, leaf = head.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, leaf, embedding)


def load_native(directory: Path, family: Family, config: dict[str, Any], *, dtype: torch.dtype,
                device: torch.device) -> torch.nn.Module:
    """Build the transformers module of a LLaDA / Dream checkpoint and load its weights.

    Args:
        directory: the checkpoint directory (``config.json`` and safetensors).
        family: its :class:`Family`; ``family.native`` picks ``llama`` or ``qwen2``.
        config: the parsed ``config.json``.
        dtype / device: where the weights go (cast once while loading).

    Returns:
        ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` with ``is_causal=False``, in eval mode.

    Raises:
        ModelError: unsupported config, or checkpoint tensors that do not match it.
    """
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    directory = Path(directory)
    device = torch.device(device)
    if family.native == "llama":
        hf_config, cls = llada_config(config, dtype=dtype), LlamaForCausalLM
        rename, source_name = llada_name, llada_source_name
    elif family.native == "qwen2":
        hf_config, cls = dream_config(config, dtype=dtype), Qwen2ForCausalLM
        rename, source_name = _dream_name, _identity
    else:
        raise ModelError(f"family {family.name!r} has no native loader (native={family.native!r})")
    label = f"{family.name} ({directory.name})"
    with torch.device("meta"):
        module = cls(hf_config)
    if family.native == "qwen2" and config.get("attention_bias") is False:
        # Dream conversions of bias-free (Llama-style) checkpoints say so with attention_bias: false.
        for layer in module.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias = None
    _load_weights(module, directory, rename, source_name, dtype=dtype, device=device,
                  tied=bool(hf_config.tie_word_embeddings), label=label)
    _reset_rotary(module, device)
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if leftover:  # a transformers change added state we do not know how to fill
        raise ModelError(f"{label}: tensors left unloaded after loading: {_names(leftover)}")
    module.requires_grad_(False)
    return module.eval()


def load_weights(module: torch.nn.Module, directory: Path, *, dtype: torch.dtype, device: torch.device, tied: bool,
                 label: str) -> None:
    """Fill a meta-device ``module`` whose parameter names are the checkpoint's own (block-causal
    models on Qwen2 / Qwen3, :mod:`dllm_strategies.models.block_causal`) and rebuild its rotary
    buffers: every checkpoint tensor used, every parameter filled, else :class:`ModelError`."""
    device = torch.device(device)
    _load_weights(module, Path(directory), _identity, _identity, dtype=dtype, device=device, tied=tied, label=label)
    _reset_rotary(module, device)
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if leftover:
        raise ModelError(f"{label}: tensors left unloaded after loading: {_names(leftover)}")


def load_tokenizer(directory: Path, family: Family | None = None):
    """The tokenizer of a natively loaded checkpoint, without the checkpoint's own code.

    Dream-family checkpoints name ``DreamTokenizer`` (``tokenization_dream.py``, a copy of
    Qwen2's byte-level BPE over ``vocab.json``/``merges.txt``) through ``auto_map``, which
    ``AutoTokenizer`` refuses without ``trust_remote_code``; it loads as ``Qwen2Tokenizer``.
    Other checkpoints load through the class their ``tokenizer_config.json`` names (LLaDA's
    ``PreTrainedTokenizerFast`` over ``tokenizer.json``), or ``AutoTokenizer`` with remote code
    off when it names none; a remote tokenizer class with a
    ``tokenizer.json`` present loads as ``PreTrainedTokenizerFast``.

    Raises:
        ModelError: the tokenizer cannot be loaded without remote code.
    """
    import transformers

    directory = Path(directory)
    config_file = directory / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tok_class = tok_config.get("tokenizer_class") or ""
    remote = bool(tok_config.get("auto_map")) or not hasattr(transformers, tok_class or "AutoTokenizer")
    try:
        if tok_class == "DreamTokenizer" or (remote and family is not None and family.native == "qwen2"
                                              and (directory / "vocab.json").is_file()):
            return transformers.Qwen2Tokenizer.from_pretrained(str(directory))
        if (remote or tok_class == "PreTrainedTokenizerFast") and (directory / "tokenizer.json").is_file():
            # Directly: AutoTokenizer would read config.json and warn that it does not know model_type "llada".
            return transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
        if tok_class and not remote:
            # The named class directly: AutoTokenizer would read config.json only to find it, and
            # building a config from a family's legacy keys (Dream's ``rope_scaling``) warns.
            return getattr(transformers, tok_class).from_pretrained(str(directory))
        return transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of {directory} without remote code "
                         f"(tokenizer_class {tok_class!r}): {type(exc).__name__}: {exc}") from exc
