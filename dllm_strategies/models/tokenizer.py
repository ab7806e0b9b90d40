"""The core's own tokenizers: LLaDA's special roles (mask, end-of-text, end-of-turn, unknown and
chat role markers, ids 0..6) and a chat template over any WordPiece vocabulary, and a character
tokenizer built on them for tiny models (any ASCII text encodes without unknown tokens)."""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
