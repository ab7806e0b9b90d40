"""Rules of the masked block-diffusion models' own ``generate`` functions, for any masked model
(block-causal or not): SDAR's and LLaDA 2's dynamic confidence rule, and Fast-dLLM v2's
sub-blocks with the first token of each block decided by the previous block.
"""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import Commit, Plan, Plugin, hookimpl, ops
from dllm_strategies.defaults import block_bounds

_unit = [attrs.validators.ge(0.0), attrs.validators.le(1.0)]


class ConfidenceDynamic(Plugin):
    """SDAR's ``low_confidence_dynamic`` (also LLaDA 2's rule): commit every masked position of
    the window whose confidence exceeds ``tau`` when there are at least as many as the schedule's
    budget, else the budget's best-scored ones.  (github.com/JetAstra/SDAR ``generate.py``,
    ``confidence_threshold`` 0.85; LLaDA 2.0's ``generate``, ``threshold`` 0.95.)

    Options:
        tau: the confidence a position needs to commit beyond the budget.
    """

    processes = ("absorbing", "uniform")

    @attrs.frozen
    class Options:
        tau: float = attrs.field(default=0.85, validator=_unit)

    @hookimpl
    def dllm_remask(self, state, proposal, plan: Plan) -> torch.Tensor:
        window = plan.window(state)
        sure = window & (proposal.confidence > self.options.tau)
        enough = sure.sum(1) >= plan.budget
        return torch.where(enough[:, None], sure, ops.top_k_mask(proposal.scores, plan.budget, window))


class SubBlocks(Plugin):
    """Fast-dLLM v2's sub-block decoding: inside the model's block (counted from the row's first
    token when the model's blocks are aligned), the window is the first sub-block of ``size``
    positions that still has a masked position; a remasking rule then decides inside it
    (``threshold(tau=0.9)`` is Fast-dLLM v2's).  With ``first_token`` the first position of a
    new block is committed at the block's first step, from the prediction the finished block
    left for it, as Fast-dLLM v2 takes its next token from the block it just cached.  The forward
    still reads the whole block.  (Wu et al., "Fast-dLLM v2", arXiv 2509.26328; the hub
    ``modeling.py`` ``generate``: ``small_block_size`` 8.)

    Options:
        size: positions per sub-block (it should divide the block length).
        first_token: commit a block's first position at its first step.
    """

    @attrs.frozen
    class Options:
        size: int = attrs.field(default=8, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)])
        first_token: bool = True

    @hookimpl
    def dllm_schedule(self, state) -> Plan:
        masked = state.masked
        first = masked.int().argmax(1)
        start, end = block_bounds(state, first)
        L, size = state.config.block_length, self.options.size
        # sub-blocks are counted from the block's own start, which precedes column 0 for a row
        # whose prompt shares its first block
        origin = end - L
        sub = torch.div(first - origin, size, rounding_mode="floor")
        lo = torch.maximum(origin + sub * size, start)
        hi = torch.minimum(origin + (sub + 1) * size, end)
        return Plan(window_start=lo, window_end=hi, budget=torch.ones_like(lo))

    @hookimpl(wrapper=True)
    def dllm_remask(self, state, proposal, plan: Plan):
        result = yield
        if not self.options.first_token:
            return result
        commit = result if isinstance(result, Commit) else Commit(mask=result)
        start, end = block_bounds(state, plan.window_start)
        opening = (plan.window_start == start) & (end - start == state.config.block_length) & \
            (state.steps_in_window(plan.window_start) == 0)
        first = torch.zeros_like(commit.mask)
        first[torch.arange(state.batch_size, device=state.device), start] = True
        first &= opening[:, None] & state.masked & (proposal.tokens != state.config.mask_id)
        return attrs.evolve(commit, mask=commit.mask | first)
