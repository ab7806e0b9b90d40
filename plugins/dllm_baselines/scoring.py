"""Scores that order which masked positions commit first (hook ``dllm_score``)."""

from __future__ import annotations

import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.plugin import Plugin


#: Dream's ``torch.log(probs + 1e-10)`` in its ``entropy`` score
DREAM_EPS = 1e-10


class LowConfidence(Plugin):
    """LLaDA's ``low_confidence`` remasking (the default): commit the positions whose
    candidate has the highest softmax probability; the rest stay masked.
    (Nie et al., "Large Language Diffusion Models", arXiv 2502.09992.)"""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @hookimpl
    def dllm_score(self, confidence: torch.Tensor) -> torch.Tensor:
        return confidence


class RandomOrder(Plugin):
    """LLaDA's ``random`` remasking (Dream's ``origin``): positions commit in a uniformly
    random order, seeded by the run's seed."""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    stochastic = True

    @hookimpl
    def dllm_start(self, state) -> None:
        self.generator = torch.Generator(device=state.device).manual_seed(state.config.seed + 1)

    @hookimpl
    def dllm_score(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.rand(tokens.shape, generator=self.generator, device=tokens.device)


class Margin(Plugin):
    """Dream's ``topk_margin``: score = top-1 minus top-2 probability, so positions whose
    best candidate clearly beats the runner-up commit first.
    (Ye et al., "Dream 7B", arXiv 2508.15487.)"""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @hookimpl
    def dllm_score(self, logits) -> torch.Tensor:
        return ops.top2_margin(logits.values)


class NegativeEntropy(Plugin):
    """Dream's ``entropy``: score = negative entropy of the position's distribution, so the
    most certain positions commit first.  Computed as Dream computes it,
    ``sum p * log(p + 1e-10)`` in the logits' dtype, so rankings match theirs.
    (Ye et al., arXiv 2508.15487.)"""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @hookimpl
    def dllm_score(self, logits) -> torch.Tensor:
        return -ops.reference_entropy(logits.values, eps=DREAM_EPS)
