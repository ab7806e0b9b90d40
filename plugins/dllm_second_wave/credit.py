"""CreditDecoding: decode on logits fused with the trace credit each position's past
predictions earned (wraps ``dllm_forward``, owns ``dllm_remask``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import DecodeState, Logits, Plan, Proposal

from dllm_second_wave.validate import non_negative, positive, unit

#: a position commits when its fused confidence is within this of the row's best
BEST_SLACK = 1e-5


class Credit(Plugin):
    """CreditDecoding: every position of the current block keeps a *trace credit* per
    vocabulary entry, ``C`` (block x V).  At each forward after the block's first the credit
    decays, ``C *= beta``; then each masked position adds ``conf ** gamma`` to the credit of
    its current argmax (``conf`` its softmax probability).  The step decodes on the fused
    logits ``l + alpha * log(1 + C)``: candidates, confidences and the rule all see them.
    Rule: commit every masked block position whose fused confidence is at least
    ``min(tau, best - 1e-5)`` (``best``: the row's highest), so the best always commits.
    (Wang et al., "CreditDecoding: Accelerating Parallel Decoding in Diffusion Large Language
    Models with Trace Credit", arXiv 2510.06133; constants from dInfer's
    ``CreditThresholdParallelDecoder``.)

    Options (the paper's names in brackets):
        tau: confidence threshold on the fused distribution (0.9).
        alpha: fusion weight of the credit, ``l + alpha * log(1 + C)`` [credit_alpha] (0.7).
        beta: decay of the credit per forward, ``C *= beta`` [decay_beta] (0.8).
        gamma: exponent of the confidence added to the credit, ``conf ** gamma``
            [boost_gamma] (0.2).

    State: the credit of each batch row's current block (B x block x V, float32), how many
    forwards it has seen, and the block it belongs to; reset when a row's window moves.
    """

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @attrs.frozen
    class Options:
        tau: float = attrs.field(default=0.9, validator=unit)
        alpha: float = attrs.field(default=0.7, validator=non_negative)
        beta: float = attrs.field(default=0.8, validator=unit)
        gamma: float = attrs.field(default=0.2, validator=positive)

    @hookimpl
    def dllm_start(self, state: DecodeState, model) -> None:
        B, device = state.batch_size, state.device
        self.credit = torch.zeros(B, state.config.block_length, model.vocab_size, device=device)
        self.block = torch.full((B,), -1, dtype=torch.long, device=device)
        self.forwards = torch.zeros(B, dtype=torch.long, device=device)

    @hookimpl(wrapper=True)
    def dllm_forward(self, state: DecodeState, plan: Plan):
        logits = yield
        return self.fuse(state, plan, logits)

    def fuse(self, state: DecodeState, plan: Plan, logits: Logits) -> Logits:
        """Update the credit of the live rows with this forward and return the fused logits
        (float32; columns outside the window unchanged)."""
        options, rows = self.options, state.rows
        width = int((plan.window_end - plan.window_start).max())
        if width > self.credit.shape[1]:  # a schedule with windows wider than block_length
            grow = self.credit.new_zeros(self.credit.shape[0], width - self.credit.shape[1], self.credit.shape[2])
            self.credit = torch.cat([self.credit, grow], 1)
        width = self.credit.shape[1]
        moved = plan.window_start != self.block[rows]
        self.block[rows] = plan.window_start
        self.forwards[rows] = torch.where(moved, 0, self.forwards[rows])
        credit = self.credit[rows].masked_fill(moved[:, None, None], 0.0)
        credit = torch.where((self.forwards[rows] > 0)[:, None, None], credit * options.beta, credit)

        # the window's columns, as offsets into the logits and into the credit
        values = logits.values.float()
        W = values.shape[1]
        columns = plan.window_start[:, None] + torch.arange(width, device=state.device)[None, :]
        inside = (columns < plan.window_end[:, None]) & (columns >= logits.start) & (columns < logits.stop)
        block = values.gather(1, (columns - logits.start).clamp(0, W - 1)[..., None].expand(-1, -1, values.shape[2]))
        probs = torch.softmax(block.detach(), dim=-1)  # the credit is kept across steps: no autograd history
        top, token = probs.max(-1)
        masked = state.masked.gather(1, columns.clamp(max=state.config.gen_length - 1))
        earned = top.pow(options.gamma) * (inside & masked)
        credit = credit.scatter_add(2, token[..., None], earned[..., None])
        self.credit[rows] = credit
        self.forwards[rows] += 1

        fused = block + options.alpha * torch.log1p(credit)
        offset = (logits.start + torch.arange(W, device=state.device))[None, :] - plan.window_start[:, None]
        in_window = (offset >= 0) & (offset < width) & \
            (offset + plan.window_start[:, None] < plan.window_end[:, None])
        spread = fused.gather(1, offset.clamp(0, width - 1)[..., None].expand(-1, -1, values.shape[2]))
        return attrs.evolve(logits, values=torch.where(in_window[..., None], spread, values))

    @hookimpl
    def dllm_remask(self, state: DecodeState, proposal: Proposal, plan: Plan) -> torch.Tensor:
        window = plan.window(state)
        confidence = proposal.confidence.masked_fill(~window, float("-inf"))
        best = confidence.max(1, keepdim=True).values
        bar = torch.clamp(best - BEST_SLACK, max=self.options.tau)
        return window & (confidence >= bar)
