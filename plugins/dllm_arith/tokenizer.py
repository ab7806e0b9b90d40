"""The word-level tokenizer of the synthetic task, built with ``tokenizers``.

Words are tokens and every digit is its own token (a number's later digits are WordPiece
continuations ``@@d``; not ``##``, which would swallow GSM8K's ``####`` marker), so ``15``
is ``1 @@5`` and decodes back to ``15``.  That keeps a
3-step problem near 30 prompt and 40 answer tokens, half of a character tokenizer.

Special tokens follow LLaDA's roles: a mask token, an end-of-text token that pads every
response to the generation length, an end-of-turn token that closes the answer, and chat
role markers used by the chat template.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from dllm_arith import task
from dllm_strategies.models.tokenizer import CONTINUATION, END_OF_TURN, word_piece_tokenizer

ANSWER_MARK = "####"


def _words() -> list[str]:
    texts = [*task.STARTS, *task.ADDS, *task.SUBS, *task.QUESTIONS, *task.FILLERS]
    texts += [n for triple in task.NAMES for n in triple] + [n.capitalize() for _, n, _ in task.NAMES]
    texts += list(task.ITEMS) + ["+ - * / = . , ? ! ' : ( ) Q A the a an of and answer is"]
    words = set()
    for text in texts:
        for word in text.replace("{", " ").replace("}", " ").split():
            words.add(word)
    words -= {"P", "name", "a", "b", "items", "friend", "obj"} - {"a"}
    digits = [str(d) for d in range(10)] + [f"{CONTINUATION}{d}" for d in range(10)]
    return digits + sorted(words)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the task's tokenizer (deterministic: same vocabulary every time)."""
    return word_piece_tokenizer(_words(), added=(ANSWER_MARK,), max_input_chars_per_word=32)


def save_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def prompt_text(question: str, tokenizer: PreTrainedTokenizerFast) -> str:
    """The chat-formatted prompt for one question (generation prompt included)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def response_text(solution: str) -> str:
    """The training target: the solution closed by end-of-turn (end-of-text padding follows)."""
    return f"{solution} {END_OF_TURN}"
