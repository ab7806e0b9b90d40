"""EB-Sampler: commit as many low-entropy positions as an entropy budget allows (hook
``dllm_remask``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import DecodeState, Plan, Proposal

from dllm_second_wave.validate import non_negative


def entropy_bounded_count(entropy: torch.Tensor, eligible: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) per row, the longest k >= 1 such that the k lowest eligible entropies
    ``H_(1) <= ... <= H_(k)`` satisfy ``sum_{j<=k} H_(j) - max_{j<=k} H_(j) <= gamma``
    (0 where nothing is eligible).

    The left side is 0 for k = 1 (so k >= 1 whenever a position is eligible, as gamma >= 0) and
    never decreases with k, so the number of prefixes within the bound is the longest one.
    """
    ranked = entropy.masked_fill(~eligible, float("inf"))
    ordered = torch.sort(ranked, dim=1, stable=True).values
    present = torch.isfinite(ordered)
    finite = ordered.masked_fill(~present, 0.0)
    spent = finite.cumsum(1) - finite.cummax(1).values
    within = present & (spent <= gamma)
    return within.sum(1)


class EbSampler(Plugin):
    """EB-Sampler (entropy-bounded unmasking): order the current block's masked positions by
    the entropy ``H = -sum p log p`` of their distribution, lowest first, and commit the longest
    prefix of k >= 1 positions with ``sum_{j<=k} H_(j) - max_{j<=k} H_(j) <= gamma``: the total
    uncertainty committed at once, beyond the single most uncertain token, stays within
    ``gamma`` nats.  Carries no state.
    (Ben-Hamu et al., "Accelerated Sampling from Masked Diffusion Models via Entropy Bounded
    Unmasking", arXiv 2505.24857.)

    Options:
        gamma: the entropy budget in nats.  The authors publish no code; reimplementations use
            0, 0.001 and 0.1.  The default 0.1 is the most parallel of them; sweep it.
    """

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @attrs.frozen
    class Options:
        gamma: float = attrs.field(default=0.1, validator=non_negative)

    @hookimpl
    def dllm_remask(self, state: DecodeState, proposal: Proposal, plan: Plan) -> torch.Tensor:
        window = plan.window(state)
        logits = proposal.logits
        entropy = logits.widen(ops.entropy(logits.values), float("inf"), state.config.gen_length)
        eligible = window & torch.isfinite(entropy)
        k = entropy_bounded_count(entropy, eligible, self.options.gamma)
        return ops.top_k_mask(-entropy, k, eligible)
