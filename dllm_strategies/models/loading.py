"""``load_model(path_or_id)``: one loader for every model the decoder runs.

Resolution order:
1. a name registered through the ``dllm_models`` hook (``default``, ``default-dparallel``...);
2. a local directory or hub id whose ``config.json`` names a known family:
   LLaDA and Dream load natively onto transformers' Llama / Qwen2 classes
   (:mod:`dllm_strategies.models.native`, no remote code), SDAR and Fast-dLLM v2 onto Qwen3 / Qwen2
   with the block-causal mask (:mod:`~dllm_strategies.models.block_causal`), DiffusionGemma onto
   its own transformers class (:mod:`~dllm_strategies.models.diffusion_gemma`); transformers' own bidirectional
   models (``is_causal: false`` and a mask id) and any ``*ForMaskedLM`` load directly;
3. anything else only with ``trust_remote_code=True`` (an explicit opt-in).
"""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any

import torch

from dllm_strategies import discovery
from dllm_strategies.errors import ModelError
from dllm_strategies.models import block_causal, diffusion_gemma, families, native
from dllm_strategies.models.adapter import DiffusionModel


def _registered_models() -> dict[str, dict[str, Any]]:
    return discovery.installed_models()


def _may_be_registered(name: str) -> bool:
    """Registered model names are bare words; a path or hub id never consults the plugins."""
    return "/" not in name and "\\" not in name and not name.startswith((".", "~"))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``/None: bf16 on CUDA, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float64": torch.float64}
    if dtype not in names:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[dtype]


def registered_or_local_dir(name: str) -> Path | None:
    """The directory a registered model name stands for, else ``name`` as an existing directory,
    else None (e.g. a hub id).  Nothing is downloaded or checked further."""
    entry = _registered_models().get(name) if _may_be_registered(name) else None
    if entry is not None:
        return Path(entry["path"])
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def local_dir(path_or_id: str) -> Path:
    """The checkpoint directory of a local path or a hub id (downloaded when online)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or path_or_id.startswith((".", "~")) or path_or_id.count("/") != 1:
        registered = discovery.unknown_model_note() if _may_be_registered(path_or_id) else "it is a path"
        raise ModelError(
            f"cannot find model {path_or_id!r}: no such directory, and it is neither a registered name "
            f"({registered}) nor a hub id of the form 'org/name'"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                                  "*.model", "*.txt", "*.py"]))
    except Exception as exc:  # offline, unknown id, no access
        raise ModelError(
            f"cannot find model {path_or_id!r}: not a local directory, and the hub gave: {type(exc).__name__}: {exc}"
        ) from exc


def read_config(directory: Path) -> dict[str, Any]:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{directory} has no config.json; is it a transformers checkpoint?")
    return json.loads(config_file.read_text())


def _load_tokenizer(directory: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of {directory}: {type(exc).__name__}: {exc}") from exc


def _special_id(config: dict, tokenizer, key: str, token_attr: str, default: int | None) -> int | None:
    if config.get(key) is not None:
        value = config[key]
        return value[0] if isinstance(value, list) else value
    token_id = getattr(tokenizer, token_attr, None)
    return token_id if token_id is not None else default


def load_model(path_or_id: str, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, mask_id: int | None = None,
               trust_remote_code: bool = False) -> DiffusionModel:
    """Load a diffusion LM as a :class:`DiffusionModel` ready for :func:`dllm_strategies.decode`.

    Args:
        path_or_id: a registered name (``default``), a local checkpoint directory, or a hub id.
        device: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16``...
        mask_id: override the family's mask id.
        trust_remote_code: allow the checkpoint's own modelling code for unknown families.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = resolve_dtype(dtype, device)
    registered = _registered_models() if _may_be_registered(path_or_id) else {}
    name = path_or_id
    if path_or_id in registered:
        entry = registered[path_or_id]
        if not entry["path"].is_dir():
            raise ModelError(
                f"model {name!r} is registered by {entry['source']} at {entry['path']}, which does not exist "
                f"({entry['description'] or 'no description'}); build it with the command that plugin documents, "
                "or reinstall the package that ships it"
            )
        path_or_id = str(entry["path"])
    directory = local_dir(path_or_id)
    config = read_config(directory)
    model_type = config.get("model_type", "")
    if model_type in families.UNSUPPORTED_MODEL_TYPES:
        raise ModelError(f"{name}: {families.UNSUPPORTED_MODEL_TYPES[model_type]} (model_type {model_type!r}); "
                         f"natively supported: {_native_list()}")
    family = families.family_for_model_type(model_type)
    if family in (families.SDAR, families.FAST_DLLM_V2):  # block-causal masked diffusion, exact cache
        return block_causal.load(directory, config, family, dtype=torch_dtype, device=device, name=name,
                                 mask_id=mask_id)
    if family is families.DIFFUSION_GEMMA:  # transformers' own class, uniform-state diffusion
        return diffusion_gemma.load(directory, config, _load_tokenizer(directory, False), dtype=torch_dtype,
                                    device=device, name=name)
    if family is not None and family.native:
        tokenizer = native.load_tokenizer(directory, family)
        module = native.load_native(directory, family, config, dtype=torch_dtype, device=device)
    else:
        tokenizer = _load_tokenizer(directory, trust_remote_code)
        if config.get("is_causal") is False:
            family = families.BIDIRECTIONAL
            module = _load_transformers(directory, "AutoModelForCausalLM", torch_dtype, device, name)
        elif any(a.endswith("ForMaskedLM") for a in config.get("architectures") or ()):
            family = families.MASKED_LM
            module = _load_transformers(directory, "AutoModelForMaskedLM", torch_dtype, device, name)
        elif trust_remote_code:
            family = families.Family(name=f"remote:{model_type}", model_types=(model_type,))
            module = _load_remote(directory, torch_dtype, device, name)
        else:
            raise ModelError(
                f"{name}: model_type {model_type!r} is not a known diffusion LM family; natively supported: "
                f"{_native_list()}. Pass trust_remote_code=True to run the checkpoint's own code at your own risk."
            )
    module.eval()
    mask = mask_id if mask_id is not None else _special_id(config, tokenizer, "mask_token_id", "mask_token_id",
                                                           family.mask_id)
    if mask is None:
        raise ModelError(
            f"{name}: no mask token: neither config.json 'mask_token_id' nor the tokenizer defines one; "
            "pass mask_id=... or add a mask token to the tokenizer"
        )
    width = _logits_width(module, int(config.get("embedding_size") or config.get("vocab_size") or len(tokenizer)))
    # The checkpoint's own ids first; the family table's only as defaults inside the vocabulary.
    eot_ids = tuple(dict.fromkeys(i for i in (*_eot_ids_from(config, tokenizer), *family.eot_ids) if 0 <= i < width))
    fill = family.fill_id if family.fill_id in eot_ids else (eot_ids[0] if eot_ids else tokenizer.pad_token_id)
    if fill is None:
        raise ModelError(f"{name}: no end-of-text token in config ('eos_token_id') or tokenizer; "
                         "EoT padding and truncation need one")
    return DiffusionModel(
        module=module, tokenizer=tokenizer, family=family, mask_id=int(mask), eot_ids=eot_ids,
        fill_id=int(fill), vocab_size=width, max_positions=_max_positions(config), name=name,
    )


def _native_list() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in families.FAMILIES if f.native) + \
        ", transformers models with is_causal=false, *ForMaskedLM"


def _eot_ids_from(config: dict, tokenizer) -> tuple[int, ...]:
    ids = config.get("eos_token_id")
    ids = list(ids) if isinstance(ids, list) else ([ids] if ids is not None else [])
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    return tuple(int(i) for i in ids)


def _logits_width(module, vocab: int) -> int:
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    return int(head.weight.shape[0]) if head is not None and hasattr(head, "weight") else vocab


def _max_positions(config: dict) -> int | None:
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        if config.get(key):
            return int(config[key])
    return None


def _load_transformers(directory: Path, auto: str, dtype: torch.dtype, device: torch.device, name: str):
    import transformers

    try:
        module = getattr(transformers, auto).from_pretrained(str(directory), dtype=dtype)
    except Exception as exc:
        raise ModelError(f"{name}: transformers could not load it with {auto}: {type(exc).__name__}: {exc}") from exc
    return module.to(device)


def _load_remote(directory: Path, dtype: torch.dtype, device: torch.device, name: str):
    import transformers

    try:
        module = transformers.AutoModel.from_pretrained(str(directory), dtype=dtype, trust_remote_code=True)
    except Exception as exc:
        raise ModelError(
            f"{name}: its remote modelling code failed under transformers {transformers.__version__}: "
            f"{type(exc).__name__}: {exc}. Families that need no remote code: {_native_list()}"
        ) from exc
    return module.to(device)




def wrap_module(module: torch.nn.Module, tokenizer, name: str = "") -> DiffusionModel:
    """A :class:`DiffusionModel` for a transformers bidirectional model already in memory
    (e.g. during training), with ids from its config and tokenizer."""
    config = module.config.to_dict()
    mask = _special_id(config, tokenizer, "mask_token_id", "mask_token_id", None)
    if mask is None:
        raise ModelError(f"{name or type(module).__name__}: no mask token in config or tokenizer")
    eot_ids = _eot_ids_from(config, tokenizer)
    return DiffusionModel(
        module=module, tokenizer=tokenizer, family=families.BIDIRECTIONAL, mask_id=int(mask), eot_ids=eot_ids,
        fill_id=int(eot_ids[0] if eot_ids else tokenizer.pad_token_id),
        vocab_size=_logits_width(module, int(config["vocab_size"])), max_positions=_max_positions(config), name=name,
    )
