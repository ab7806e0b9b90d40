"""KLASS: commit positions whose distribution has stopped moving (hook ``dllm_remask``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import DecodeState, Plan, Proposal

from dllm_second_wave.validate import count, non_negative, unit


class Klass(Plugin):
    """KLASS (KL-Adaptive Stability Sampling): keep every position's distribution of the
    previous step and the last ``history`` values of ``KL_i = KL(p_t || p_{t-1})``.  A position
    is *stable* when all of them are below ``kl``; commit every masked position of the current
    block that is stable and has confidence above ``conf``.  A row with no such position falls
    back to LLaDA's top-k of the schedule's budget.  As in the authors' code, stability is only
    trusted from the block's step ``history - 1`` on, and a position's first forward has no
    KL (it counts as unstable), so nothing commits by this rule before ``history`` KL values
    exist.  (Kim et al., "KLASS: KL-Guided Fast Inference in Masked Diffusion Models",
    arXiv 2511.05664, github.com/shkim0116/KLASS; defaults from its LLaDA GSM8K script.)

    Options:
        conf: confidence a stable position needs (0.6).
        kl: bound on each of the last ``history`` KL values (0.015).
        history: how many consecutive KL values must be below ``kl`` (2).

    State: per batch row, the previous step's log-distribution over the response
    (B x G x V, float32: the memory cost of the method), whether it exists per column, and the
    last ``history`` KL values per column.  Distributions are the clean (noise-free) softmax.
    """

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @attrs.frozen
    class Options:
        conf: float = attrs.field(default=0.6, validator=unit)
        kl: float = attrs.field(default=0.015, validator=non_negative)
        history: int = attrs.field(default=2, validator=count(1))

    @hookimpl
    def dllm_start(self, state: DecodeState, model) -> None:
        B, G, device = state.batch_size, state.config.gen_length, state.device
        self.previous = torch.zeros(B, G, model.vocab_size, device=device)
        self.seen = torch.zeros(B, G, dtype=torch.bool, device=device)
        self.kls = torch.full((B, G, self.options.history), float("inf"), device=device)

    def observe(self, state: DecodeState, proposal: Proposal) -> torch.Tensor:
        """Record this step's distributions of the live rows; (B, G) bool: stable columns."""
        rows, G = state.rows, state.config.gen_length
        logits = proposal.logits
        logp = torch.log_softmax(logits.values.detach().float(), dim=-1)  # kept across steps
        covered = logits.reach(G, state.device)  # per row: a cache may cover rows' blocks differently
        current = logits.widen(logp, 0.0, G)
        previous, seen = self.previous[rows], self.seen[rows]
        divergence = (current.exp() * (current - previous)).sum(-1)
        divergence = divergence.masked_fill(~(covered & seen), float("inf"))
        kls = torch.cat([self.kls[rows, :, 1:], divergence[..., None]], -1)
        self.kls[rows] = kls
        self.previous[rows] = torch.where(covered[..., None], current, previous)
        self.seen[rows] = seen | covered
        return (kls < self.options.kl).all(-1)

    @hookimpl
    def dllm_remask(self, state: DecodeState, proposal: Proposal, plan: Plan) -> torch.Tensor:
        options = self.options
        stable = self.observe(state, proposal)
        trusted = state.steps_in_window(plan.window_start) >= options.history - 1
        window = plan.window(state)
        ready = window & stable & trusted[:, None] & (proposal.confidence > options.conf)
        fallback = ops.top_k_mask(proposal.scores, plan.budget, window)
        return torch.where(ready.any(1, keepdim=True), ready, fallback)
