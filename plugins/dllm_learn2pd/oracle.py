"""Learn2PD's Extremely Greedy Parallel oracle (hook ``dllm_remask``)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.decode import MeteredModel
from dllm_strategies.errors import ConfigError
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import Commit

from dllm_learn2pd.accepted import FilterCommit
from dllm_learn2pd.reference import REFERENCES, self_reference

SELF_REFERENCE = "self_reference"
"""The ``extras`` key under which a caller that already decoded the prompts with the model's
standard decode (the bench's plain baseline) hands those responses over."""


class EgpOracle(Plugin):
    """Extremely Greedy Parallel (EGP) decoding, the oracle of Learn2PD
    (Bao et al., "Learning to Parallel", arXiv 2509.25188).

    At every step, commit every masked position of the open window whose candidate equals the
    reference answer.  When the block stalls, copy the reference into the window's masked
    positions.  What a stall is, is ``stall``:

    - ``"argmax"`` (the authors'): a step whose block argmax (all of the block's positions,
      committed or not) is identical to the previous step's in the same block.  Every match is
      committed at once, so such a step matches nothing.  A step that matches nothing *without*
      being such a stall (a block's first step, or one whose argmax moved) commits nothing in the
      authors' loop, whose next forward then sees the same input, returns the same argmax and
      copies.  A step here must commit at least one position, so that step commits the window's
      best-scored position with its reference token (the least the decoder's promise asks) and
      the next step copies the reference, as the authors' repeated forward does: every block
      takes the authors' number of forwards.
    - ``"no_match"``: any step that matches nothing copies at once, one forward fewer per such
      step than the authors' loop and never a forced commit (this plugin's rule before it
      followed the authors' code).

    Either way every committed token equals the reference and, with ``reference="self"``, the
    output is the reference.  Greedy, as in the paper: with a sampler the rule is the same.
    The commit reports its matches and copies as accepted (:class:`~dllm_learn2pd.accepted.FilterCommit`;
    not the one position a step that matches nothing commits for progress), so ``eot``'s
    committed branch cuts after an end-of-text of the reference the oracle committed.

    The reference (PAPERS.md) is by default the model's own standard decode of the same prompt
    (LLaDA low-confidence, one token per step, greedy, same generation and block length),
    computed once per prompt with the *unmetered* model (its forwards are not this run's cost)
    and cached; ``reference="given"`` uses ``decode(..., reference=...)`` (e.g. a gold answer).
    """

    @attrs.frozen
    class Options:
        """Attributes:
            reference: ``"self"`` (the model's own 1-token-per-step decode) or ``"given"``
                (``DecodeState.reference``, passed as ``decode(..., reference=...)``).
            cache: keep self-references across runs (per model and prompt).
            stall: when the reference is copied into the block: ``"argmax"`` (the authors': at
                the step whose block argmax equals the previous step's; a step that matches
                nothing otherwise commits only its best-scored position and the next step
                copies) or ``"no_match"`` (at any step that matches nothing, one forward sooner).
        """

        reference: Literal["self", "given"] = attrs.field(
            default="self", validator=attrs.validators.in_(("self", "given")))
        cache: bool = True
        stall: Literal["argmax", "no_match"] = attrs.field(
            default="argmax", validator=attrs.validators.in_(("argmax", "no_match")))

    @hookimpl
    def dllm_start(self, state, model) -> None:
        config = state.config
        if self.options.reference == "given":
            if state.reference is None:
                raise ConfigError("egp_oracle(reference=given) needs a reference response: pass "
                                  "decode(..., reference=<(batch, gen_length) token ids>), or use "
                                  "egp_oracle(reference=self) for the model's own decode")
            reference = state.reference
        else:
            if state.reference is not None:
                raise ConfigError("a reference was passed to decode() but egp_oracle(reference=self) computes its "
                                  "own; use egp_oracle(reference=given) to decode against the one you pass")
            reference = state.extras.get(SELF_REFERENCE)
            if reference is None:
                raw = model.model if isinstance(model, MeteredModel) else model
                compute = REFERENCES.references if self.options.cache else self_reference
                reference = compute(raw, state.prompt, state.prompt_mask, config)
            elif tuple(reference.shape) != (state.batch_size, config.gen_length):
                raise ConfigError(f"extras[{SELF_REFERENCE!r}] must be ({state.batch_size}, {config.gen_length}) "
                                  f"(batch, gen_length) token ids, got shape {tuple(reference.shape)}")
        if bool((reference == config.mask_id).any()):
            row, col = (reference == config.mask_id).nonzero()[0].tolist()
            raise ConfigError(f"the oracle's reference holds the mask token (id {config.mask_id}) at row {row}, "
                              f"response position {col}; a reference must be a complete response")
        self.reference = reference.to(state.device)
        # Per row of the whole batch (``state.rows`` indexes them): the previous step's
        # candidates, the block they were read in (-1: none yet) and whether that step matched
        # nothing without a stall (so this step stands for the authors' repeated forward: it copies).
        B, G = state.batch_size, config.gen_length
        self.previous = torch.full((B, G), config.mask_id, dtype=torch.long, device=state.device)
        self.block = torch.full((B,), -1, dtype=torch.long, device=state.device)
        self.pending = torch.zeros(B, dtype=torch.bool, device=state.device)

    @hookimpl
    def dllm_remask(self, state, proposal, plan) -> Commit:
        rows = state.rows
        reference = self.reference.index_select(0, rows)
        window = plan.window(state)
        match = window & (proposal.tokens == reference)
        matched = match.any(1, keepdim=True)
        if self.options.stall == "no_match":
            copy = ~matched
        else:
            block = plan.inside(state.columns)
            same_block = (self.block.index_select(0, rows) == plan.window_start)[:, None]
            unchanged = ((proposal.tokens == self.previous.index_select(0, rows)) | ~block).all(1, keepdim=True)
            copy = same_block & (unchanged | self.pending.index_select(0, rows)[:, None])
            self.pending[rows] = (~copy & ~matched).squeeze(1)
            self.previous[rows] = proposal.tokens
            self.block[rows] = plan.window_start
        accepted = match | (window & copy)
        # The authors' loop commits nothing at a step that matches nothing without a stall; one
        # position (the one the core would force) keeps the decoder's at-least-one promise.
        progress = ops.best_mask(proposal.scores, window) & ~accepted.any(1, keepdim=True)
        return FilterCommit(mask=accepted | progress, tokens=reference, accepted=accepted)
