"""The core's default hook implementations: LLaDA's semi-autoregressive low-confidence
decoding.  Registered ``trylast`` in every run, so any chosen plugin takes precedence.
Functions are public so plugins can reuse one piece (e.g. the schedule) and change another.
"""

from __future__ import annotations

import torch

from dllm_strategies import ops
from dllm_strategies.hookspecs import hookimpl
from dllm_strategies.state import DecodeState, Logits, Plan, Proposal


def semi_ar_plan(state: DecodeState) -> Plan:
    """LLaDA's schedule: the first block with a masked position is the window; the budget is
    ``ceil(masked_in_block / steps_left_in_block)`` (equal to LLaDA's ``masked // steps`` with
    the remainder on the first steps)."""
    config = state.config
    if config.aligned_blocks:
        return _aligned_plan(state)
    start, end, masked_here = state.of_masked(_first_masked_block)
    steps_left = (config.steps_per_block - state.steps_in_window(start)).clamp(min=1)
    budget = torch.div(masked_here + steps_left - 1, steps_left, rounding_mode="floor").clamp(min=1)
    return Plan(window_start=start, window_end=end, budget=budget)


def _first_masked_block(state: DecodeState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) start and end of each row's first block with a masked position, and how many it holds."""
    width = state.config.block_length
    per_block = state.masked.view(state.batch_size, state.config.num_blocks, width).sum(-1)
    block = per_block.clamp(max=1).argmax(-1)  # argmax: the first maximum
    start = block * width
    return start, start + width, per_block.gather(1, block[:, None]).squeeze(1)  # end within gen_length


def block_bounds(state: DecodeState, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) response columns [start, end) of the block holding each row's ``columns`` (B,):
    column blocks, or blocks counted from the row's first prompt token when
    ``config.aligned_blocks`` (a block-causal model's attention blocks)."""
    width, G = state.config.block_length, state.config.gen_length
    shift = state.prompt_mask.sum(1) % width if state.config.aligned_blocks else torch.zeros_like(columns)
    block = torch.div(columns + shift, width, rounding_mode="floor")
    return (block * width - shift).clamp(min=0), ((block + 1) * width - shift).clamp(max=G)


def _aligned_plan(state: DecodeState) -> Plan:
    """:func:`semi_ar_plan` over aligned blocks: the block of the first masked position."""
    masked = state.masked
    start, end = block_bounds(state, masked.int().argmax(1))
    cols = state.columns[None, :]
    masked_here = (masked & (cols >= start[:, None]) & (cols < end[:, None])).sum(1)
    steps_left = (state.config.steps_per_block - state.steps_in_window(start)).clamp(min=1)
    budget = torch.div(masked_here + steps_left - 1, steps_left, rounding_mode="floor").clamp(min=1)
    return Plan(window_start=start, window_end=end, budget=budget)


def model_inputs(state: DecodeState, width: int | None = None):
    """Prompt plus the first ``width`` response columns (all live ones by default):
    (ids, attention mask or None when nothing is hidden, position ids or None)."""
    if width is None:
        width = int(state.live_length.max())
    ids, attention = state.sequence()
    P = state.prompt.shape[1]
    ids, attention = ids[:, :P + width], attention[:, :P + width]
    if bool(attention.all()):
        return ids, None, None
    positions = (attention.long().cumsum(-1) - 1).clamp(min=0)
    return ids, attention.long(), positions


def full_forward(model, state: DecodeState) -> Logits:
    """One forward over prompt + live response; logits for the live response columns."""
    width = int(state.live_length.max())
    ids, attention, positions = model_inputs(state, width)
    values = model.logits(ids, attention_mask=attention, position_ids=positions, logits_to_keep=width)
    return Logits(values=values, start=0)


class CoreDefaults:
    """LLaDA: semi-AR blocks, one full forward, greedy x0, confidence, top-k commit.  A
    block-autoregressive model (``model.exact_cache``) is run through its exact cache instead
    of a full forward (:mod:`dllm_strategies.blocks`)."""

    @hookimpl(trylast=True)
    def dllm_start(self, state: DecodeState, model) -> None:
        factory = getattr(model, "exact_cache", None)
        self.cache = factory(state) if factory is not None else None

    @hookimpl(trylast=True)
    def dllm_schedule(self, state: DecodeState) -> Plan:
        return semi_ar_plan(state)

    @hookimpl(trylast=True)
    def dllm_forward(self, model, state: DecodeState, plan: Plan) -> Logits:
        if getattr(self, "cache", None) is not None:
            return self.cache.logits(model, state, plan)
        return full_forward(model, state)

    @hookimpl(trylast=True)
    def dllm_sample(self, state: DecodeState, logits: Logits, plan: Plan) -> torch.Tensor:
        return ops.argmax_except(logits.values, state.config.mask_id)

    @hookimpl(trylast=True)
    def dllm_score(self, confidence: torch.Tensor) -> torch.Tensor:
        return confidence

    @hookimpl(trylast=True)
    def dllm_remask(self, state: DecodeState, proposal: Proposal, plan: Plan) -> torch.Tensor:
        return ops.top_k_mask(proposal.scores, plan.budget, plan.window(state))
