"""Remasking rules: which masked positions commit this step (hook ``dllm_remask``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.plugin import Plugin

_unit = [attrs.validators.ge(0.0), attrs.validators.le(1.0)]
#: dParallel's ``torch.log(p + 1e-12)`` in its entropy threshold
DPARALLEL_EPS = 1e-12


class Threshold(Plugin):
    """Fast-dLLM's confidence-threshold parallel decoding: in the current block commit every
    masked position whose confidence is at least ``tau`` (their code drops a candidate only
    when it is below), and always at least the best-scored one.
    (Wu et al., "Fast-dLLM", arXiv 2505.22618.)"""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @attrs.frozen
    class Options:
        tau: float = attrs.field(default=0.9, validator=_unit)

    @hookimpl
    def dllm_remask(self, state, proposal, plan) -> torch.Tensor:
        window = plan.window(state)
        sure = window & (proposal.confidence >= self.options.tau)
        return sure | ops.best_mask(proposal.scores, window)


class EntropyThreshold(Plugin):
    """The entropy threshold dParallel pairs with its distilled models: commit the
    lowest-entropy masked position of the block, plus every other one with entropy
    ``H = -sum p log p`` at most ``tau`` (0.5; 0.45 for MBPP).  ``H`` is computed as their code
    computes it, ``-sum p * log(p + 1e-12)`` of a float64 softmax, so a position near the
    threshold or a near-tie for the lowest entropy is decided as theirs is.
    (Chen et al., "dParallel", arXiv 2509.26488.)"""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @attrs.frozen
    class Options:
        tau: float = attrs.field(default=0.5, validator=attrs.validators.ge(0.0))

    @hookimpl
    def dllm_remask(self, state, proposal, plan) -> torch.Tensor:
        window = plan.window(state)
        logits = proposal.logits
        entropy = ops.reference_entropy(logits.values, eps=DPARALLEL_EPS, dtype=torch.float64)
        h = logits.widen(entropy, float("inf"), state.config.gen_length)
        return (window & (h <= self.options.tau)) | ops.best_mask(-h, window)
