"""LocalLeap: confident anchors lower the commit threshold of their neighbours (hook
``dllm_remask``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import DecodeState, Plan, Proposal

from dllm_second_wave.validate import count, unit


def near(anchors: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, N) bool: positions within ``radius`` columns of an anchor (anchors included)."""
    if radius == 0:
        return anchors
    spread = torch.nn.functional.max_pool1d(anchors[:, None].float(), kernel_size=2 * radius + 1, stride=1,
                                            padding=radius)
    return spread[:, 0] > 0


def _relaxed_below_tau(instance, attribute, value) -> None:
    if value > instance.tau:
        raise ValueError(f"relaxed={value} is above tau={instance.tau}; the relaxed threshold near an anchor "
                         "must not be stricter than the normal one (use relaxed <= tau)")


class LocalLeap(Plugin):
    """LocalLeap: masked positions of the current block whose confidence is at least ``tau``
    are *anchors* and commit; a masked position within ``radius`` columns of an anchor commits
    at the relaxed threshold ``relaxed``; every other position needs ``tau``; the best-scored
    masked position always commits.  Carries no state.
    (Kong et al., "Accelerating Diffusion LLM Inference via Local Determinism Propagation",
    arXiv 2510.07081; the authors' code was not confirmed, the rule is read from copies.)

    Options:
        tau: anchor and normal threshold (0.9).
        relaxed: threshold near an anchor (0.75), at most ``tau``.
        radius: how many columns either side of an anchor are "near" (4).
    """

    @attrs.frozen
    class Options:
        tau: float = attrs.field(default=0.9, validator=unit)
        relaxed: float = attrs.field(default=0.75, validator=[*unit, _relaxed_below_tau])
        radius: int = attrs.field(default=4, validator=count(0))

    @hookimpl
    def dllm_remask(self, state: DecodeState, proposal: Proposal, plan: Plan) -> torch.Tensor:
        options = self.options
        window = plan.window(state)
        confidence = proposal.confidence
        anchors = window & (confidence >= options.tau)
        relaxed = window & near(anchors, options.radius) & (confidence >= options.relaxed)
        return anchors | relaxed | ops.best_mask(proposal.scores, window)
