"""Small randomly initialised bidirectional Llama models built from a config, for tests,
benchmarks and first runs without any checkpoint (nothing is downloaded)."""

from __future__ import annotations

import torch

from dllm_strategies.models.adapter import DiffusionModel
from dllm_strategies.models.loading import wrap_module


def tiny_model(*, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, intermediate_size: int | None = None,
               seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               max_positions: int = 2048) -> DiffusionModel:
    """A random ``LlamaForCausalLM(is_causal=False)`` with the synthetic task's tokenizer."""
    from transformers import LlamaForCausalLM

    from dllm_strategies.arith.recipe import ModelShape, model_config
    from dllm_strategies.arith.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    shape = ModelShape(hidden_size=hidden_size, intermediate_size=intermediate_size or 3 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    module = LlamaForCausalLM(model_config(tokenizer, shape)).to(device=device, dtype=dtype).eval()
    return wrap_module(module, tokenizer, name=f"tiny-{hidden_size}x{num_layers}")
