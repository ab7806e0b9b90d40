"""Small randomly initialised bidirectional Llama models built from a config, for tests,
benchmarks and the invariant kit, with a tokenizer of their own (nothing is downloaded, and
nothing above the core is needed).

The tokenizer spells every word with one token per character (a word's later characters are
WordPiece continuations ``@@c``), so any ASCII text encodes without unknown tokens, and it has
LLaDA's special roles: a mask token, end-of-text (which pads responses), end-of-turn, and chat
role markers used by its chat template.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dllm_strategies.models.adapter import DiffusionModel
from dllm_strategies.models.loading import wrap_module
from dllm_strategies.models.tokenizer import END_OF_TURN, tiny_tokenizer

def bidirectional_llama_config(tokenizer, *, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                               num_attention_heads: int, max_position_embeddings: int) -> LlamaConfig:
    """A LLaDA-style ``LlamaConfig(is_causal=False)`` whose special ids come from ``tokenizer``
    (end-of-text and, when the tokenizer has one, end-of-turn both end a response)."""
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    eos = [tokenizer.eos_token_id] + ([end_of_turn] if end_of_turn not in (None, tokenizer.unk_token_id) else [])
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads, max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0, tie_word_embeddings=False, is_causal=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos, bos_token_id=None, mask_token_id=tokenizer.mask_token_id,
    )


def tiny_model(*, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, intermediate_size: int | None = None,
               seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               max_positions: int = 2048, tokenizer=None) -> DiffusionModel:
    """A random ``LlamaForCausalLM(is_causal=False)``; ``tokenizer`` defaults to :func:`tiny_tokenizer`
    (pass another one, e.g. a task's, to decode that task's prompts)."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = bidirectional_llama_config(
        tokenizer, hidden_size=hidden_size, intermediate_size=intermediate_size or 3 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    module = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    return wrap_module(module, tokenizer, name=f"tiny-{hidden_size}x{num_layers}")
