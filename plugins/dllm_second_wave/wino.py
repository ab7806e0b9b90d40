"""WINO: draft wide, verify narrow, and take back what the verification rejects (hooks
``dllm_forward`` and ``dllm_remask``; revocable)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.errors import ConfigError
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import Commit, DecodeState, Logits, Plan, Proposal

from dllm_second_wave.shadow import shadow_inputs
from dllm_second_wave.validate import unit

#: the draft commits at most min(max(floor(RATIO * masked_in_block), FLOOR), CEILING) positions
DRAFT_RATIO, DRAFT_FLOOR, DRAFT_CEILING = 0.7, 5, 20

_CACHE = ("WINO owns dllm_forward: its input appends a shadow copy of the block with a 4-D attention mask, "
          "which a cached forward does not build")


def draft_limit(masked_in_window: torch.Tensor) -> torch.Tensor:
    """(B,) most positions the draft may commit: ``min(max(floor(0.7 m), 5), 20)``."""
    return torch.floor(DRAFT_RATIO * masked_in_window.double()).long().clamp(min=DRAFT_FLOOR, max=DRAFT_CEILING)


class Wino(Plugin):
    """WINO (Wide-In, Narrow-Out), a revocable decoder.  Each step runs one forward whose
    input carries a *shadow* copy of the current block (all masks, the block's position ids;
    shadow position i sees everything but its own main-sequence counterpart, main positions
    never see the shadow), so the same forward gives a draft and a leave-one-out check:

    - draft (wide in): commit the block's masked positions with confidence above ``draft``,
      at most ``min(max(floor(0.7 * masked_in_block), 5), 20)`` of them (the most confident),
      and at least the most confident one;
    - verify (narrow out), only on a step whose draft committed more than one: tokens committed
      in earlier steps of this block whose shadow probability is below ``verify`` are masked
      again; when that is at least as many as the previous step committed (``n``), only the
      ``n - 1`` with the lowest shadow probability are.

    The block ends when none of its positions is masked; the step budget ``steps`` is unused.
    (Hong et al., "Wide-In, Narrow-Out: Revokable Decoding for Efficient and Effective DLLMs",
    arXiv 2507.18578, github.com/Feng-Hong/WINO-DLLM.)

    Options:
        draft: confidence above which the draft commits (0.6).
        verify: shadow probability below which an earlier commit is taken back (0.9).

    State: the shadow probability of each window column's current token, from this step's
    forward to this step's remask.  Needs a position-aligned model (LLaDA-style; not Dream's
    shifted logits) whose attention takes a dense 4-D mask (transformers' ``sdpa`` or
    ``eager``).  A core guard (``max_steps``, default 4 x gen_length) ends a run that loops.
    """

    revocable = True
    conflicts = {"prefix_cache": _CACHE, "dual_cache": _CACHE}

    @attrs.frozen
    class Options:
        draft: float = attrs.field(default=0.6, validator=unit)
        verify: float = attrs.field(default=0.9, validator=unit)

    @hookimpl
    def dllm_start(self, state: DecodeState, model) -> None:
        family = getattr(model, "family", None)
        if getattr(family, "shifted", False):
            raise ConfigError(
                f"wino needs a model whose position i scores token i; {getattr(model, 'name', 'this model')!r} "
                "shifts its logits (Dream), so the shadow's leave-one-out would see the token it re-predicts"
            )
        self.dtype = getattr(model, "dtype", torch.float32)
        self.shadow: torch.Tensor | None = None
        self.shadow_step = -1

    @hookimpl
    def dllm_forward(self, model, state: DecodeState, plan: Plan) -> Logits:
        inputs = shadow_inputs(state, plan, self.dtype)
        S = inputs.columns.shape[1]
        values = model.logits(inputs.ids, attention_mask=inputs.attention, position_ids=inputs.positions,
                              logits_to_keep=inputs.width + S)
        main, shadow = values[:, :inputs.width], values[:, inputs.width:]
        self.shadow = self.shadow_probability(state, plan, inputs.columns, inputs.valid, shadow)
        self.shadow_step = state.step
        return Logits(values=main, start=0)

    @staticmethod
    def shadow_probability(state: DecodeState, plan: Plan, columns: torch.Tensor, valid: torch.Tensor,
                           shadow: torch.Tensor) -> torch.Tensor:
        """(B, G): the shadow's probability of each window column's current token (1 elsewhere,
        and on masked columns)."""
        G = state.config.gen_length
        current = state.response.gather(1, columns.clamp(max=G - 1))
        logp = torch.log_softmax(shadow.detach().float(), dim=-1)
        p = logp.gather(-1, current[..., None]).squeeze(-1).exp()
        offset = state.columns[None, :] - plan.window_start[:, None]
        inside = (offset >= 0) & (offset < columns.shape[1])
        picked = p.gather(1, offset.clamp(0, columns.shape[1] - 1))
        ok = valid.gather(1, offset.clamp(0, columns.shape[1] - 1))
        return torch.where(inside & ok & ~state.masked, picked, torch.ones_like(picked))

    @hookimpl
    def dllm_remask(self, state: DecodeState, proposal: Proposal, plan: Plan) -> Commit:
        if self.shadow is None or self.shadow_step != state.step or self.shadow.shape != state.masked.shape:
            raise ConfigError("wino's dllm_remask needs wino's own dllm_forward in the same step (the shadow block); "
                              "another plugin answered dllm_forward: do not mark it the winner over wino")
        commit = self.draft(state, proposal, plan)
        return Commit(mask=commit, revoke=self.verify(state, plan, commit))

    def draft(self, state: DecodeState, proposal: Proposal, plan: Plan) -> torch.Tensor:
        """(B, G) bool: the wide-in commit."""
        window = plan.window(state)
        confidence = proposal.confidence
        limit = draft_limit(window.sum(1))
        sure = window & (confidence > self.options.draft)
        capped = torch.where((sure.sum(1) > limit)[:, None], ops.top_k_mask(confidence, limit, window), sure)
        return capped | (ops.best_mask(confidence, window) & ~capped.any(1, keepdim=True))

    def verify(self, state: DecodeState, plan: Plan, commit: torch.Tensor) -> torch.Tensor:
        """(B, G) bool: earlier commits of this block the shadow rejects (narrow out)."""
        inside = plan.inside(state.columns) & state.live
        earlier = inside & ~state.masked
        previous = (earlier & (state.commit_step == state.step - 1)).sum(1)
        weak = earlier & (self.shadow < self.options.verify)
        capped = ops.top_k_mask(-self.shadow, (previous - 1).clamp(min=0), weak)
        revoke = torch.where((weak.sum(1) >= previous)[:, None], capped, weak)
        return revoke & (commit.sum(1) > 1)[:, None]
