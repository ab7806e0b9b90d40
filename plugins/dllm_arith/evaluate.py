"""Exact-match accuracy of a model and strategy on synthetic-task problems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dllm_arith.task import Problem, extract_answer
from dllm_strategies.decode import decode
from dllm_strategies.strategy import Strategy


@torch.inference_mode()
def accuracy(model: Any, problems: Sequence[Problem], *, strategy: str | Strategy | None = None, gen_length: int = 64,
             block_length: int = 32, steps: int | None = None, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Decode every problem (chat prompt) and compare the ``####`` number with the answer.

    Returns accuracy (%), mean steps and NFE per problem, forwards, and wall seconds.
    """
    strategy = Strategy.parse(strategy)  # fail before decoding anything; parsed once for every batch
    correct, steps_sum, nfe_sum, seconds, forwards = 0, 0, 0, 0.0, 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        result = decode(model, [p.question for p in chunk], strategy=strategy, gen_length=gen_length,
                        block_length=block_length, steps=steps, seed=seed, chat=True)
        correct += sum(extract_answer(text) == p.answer for text, p in zip(result.text, chunk, strict=True))
        steps_sum += int(result.steps.sum())
        nfe_sum += int(result.nfe.sum())
        seconds += result.wall_time
        forwards += result.forwards
    n = max(len(problems), 1)
    return {"accuracy": 100.0 * correct / n, "steps": steps_sum / n, "nfe": nfe_sum / n,
            "forwards": forwards, "seconds": seconds}
