"""Registration plugin of dParallel certainty-forcing distillation (arXiv 2509.26488).

It adds the ``distill`` command (:mod:`.commands`) and registers two students, each with the
decoding the paper pairs distilled models with, an entropy threshold
(``entropy_threshold(tau=0.5)``) in blocks of 32: ``default-dparallel``, the shipped default
model after distillation, and ``long-answer-dparallel``, the ``long-answer`` model's.
"""

from __future__ import annotations

from pathlib import Path

import dllm_strategies
from dllm_certainty_forcing.commands import RECOMMENDED_BLOCK, RECOMMENDED_STRATEGY, add_distill_command

DPARALLEL_DIR = Path(__file__).parent / "assets" / "default-dparallel"
LONG_ANSWER_DPARALLEL_DIR = Path(__file__).parent / "assets" / "long-answer-dparallel"


@dllm_strategies.hookimpl
def dllm_models(register) -> None:
    register("default-dparallel", DPARALLEL_DIR, strategy=RECOMMENDED_STRATEGY, block_length=RECOMMENDED_BLOCK,
             description="the default model after dParallel certainty-forcing distillation; if missing, make it "
                         "with 'dllm-strategies distill trajectories' then 'dllm-strategies distill train "
                         f"--output {DPARALLEL_DIR}' (docs/distillation.md)")
    register("long-answer-dparallel", LONG_ANSWER_DPARALLEL_DIR, strategy=RECOMMENDED_STRATEGY,
             block_length=RECOMMENDED_BLOCK,
             description="the long-answer model (task 'arith-long') after dParallel certainty-forcing distillation "
                         "at high mask ratios; decode at gen 128 or more (docs/distillation.md)")


@dllm_strategies.hookimpl
def dllm_commands(subparsers) -> None:
    add_distill_command(subparsers)
