"""Small randomly initialised bidirectional Llama models built from a config, for tests,
benchmarks and the invariant kit, with a tokenizer of their own (nothing is downloaded, and
nothing above the core is needed).

The tokenizer spells every word with one token per character (a word's later characters are
WordPiece continuations ``@@c``), so any ASCII text encodes without unknown tokens, and it has
LLaDA's special roles: a mask token, end-of-text (which pads responses), end-of-turn, and chat
role markers used by its chat template.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dllm_strategies.models.adapter import DiffusionModel
from dllm_strategies.models.loading import wrap_module

MASK = "<|mdm_mask|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_TURN = "<|eot_id|>"
UNKNOWN = "<|unk|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIALS = (MASK, END_OF_TEXT, END_OF_TURN, UNKNOWN, *ROLES)
CONTINUATION = "@@"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|eot_id|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def word_piece_tokenizer(pieces: list[str], *, added: tuple[str, ...] = (),
                         max_input_chars_per_word: int = 64) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over ``pieces`` (word-initial pieces, and continuations written
    ``@@piece``) after LLaDA's special roles (ids 0..6: mask, end-of-text, end-of-turn, unknown,
    system, user, assistant), with ``added`` whole-word tokens and the chat template."""
    core = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate([*SPECIALS, *pieces])}, unk_token=UNKNOWN,
                                      max_input_chars_per_word=max_input_chars_per_word,
                                      continuing_subword_prefix=CONTINUATION))
    core.normalizer = normalizers.Strip()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(prefix=CONTINUATION, cleanup=True)
    core.add_special_tokens(list(SPECIALS))
    if added:
        core.add_tokens(list(added))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, mask_token=MASK, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, unk_token=UNKNOWN,
        additional_special_tokens=[END_OF_TURN, *ROLES], padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic character-level tokenizer with LLaDA's special roles and a chat template."""
    characters = string.ascii_letters + string.digits + string.punctuation
    return word_piece_tokenizer([*characters, *(CONTINUATION + c for c in characters)])


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
