"""Learn2PD's End-of-Text truncation (hook ``dllm_truncate``)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from dllm_strategies import hookimpl
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import DecodeState, Proposal

from dllm_learn2pd.accepted import reported_accepted


def eot_cut(state: DecodeState, proposal: Proposal, *, accepted: torch.Tensor | None = None,
            masked: torch.Tensor | None = None, predicted: bool = True) -> torch.Tensor:
    """(B,) live lengths after Learn2PD's End-of-Text rule, applied after a step's commit.

    The end-of-text token is ``state.config.fill_id``.

    1. Committed branch: if the step committed an end-of-text token at a position of
       ``accepted``, cut right after the first one.
    2. Predicted branch (only when ``predicted``): otherwise, if a live position of ``masked``
       predicts end-of-text, cut right after the most confident of those (if it is still masked,
       it is decoded later).
    3. Rows with neither keep their length.

    Args:
        state: the live rows after the step's commit.
        proposal: the step's candidates.
        accepted: (B, G) bool, where a committed end-of-text may cut: the authors' rule passes the
            positions the filter accepted (before its union with the top-k), all False without a
            filter; None: any position this step committed.
        masked: (B, G) bool, the positions the predicted branch reads: the authors' rule passes
            the mask *before* the step's commit; None: the positions still masked after it.
        predicted: whether the predicted branch exists.
    """
    eot = state.config.fill_id
    live = state.live
    committed = live & (state.commit_step == state.step) & (state.response == eot)
    if accepted is not None:
        committed = committed & accepted
    has_committed = committed.any(1)
    first = committed.int().argmax(1)  # first True (argmax returns the first maximum)
    cut = torch.where(has_committed, first + 1, state.live_length)
    if predicted:
        candidates = state.masked if masked is None else masked
        predicting = live & candidates & (proposal.tokens == eot)
        best = proposal.confidence.masked_fill(~predicting, -1.0).argmax(1)
        cut = torch.where(~has_committed & predicting.any(1), best + 1, cut)
    return cut


def _committed_source(instance, attribute, value) -> None:
    if value is not None and value not in ("accepted", "any"):
        raise ValueError(f"committed must be 'accepted', 'any' or none, got {value!r}")


class EotTruncation(Plugin):
    """End-of-Text truncation from Learn2PD (Bao et al., "Learning to Parallel", arXiv 2509.25188).

    After each step's commit, by default exactly as the authors' code (PAPERS.md):

    1. if the step committed an end-of-text token that the remasking plugin's own rule *accepted*
       (the learned filter's network, before its union with the top-k; reported as
       ``FilterCommit.accepted``, :mod:`dllm_learn2pd.accepted`), cut right after the first one;
    2. otherwise, if a position that was masked *before* the step's commit predicts end-of-text,
       cut right after the most confident of those;
    3. otherwise leave the row.

    Without a plugin that reports accepted positions (``eot`` alone, ``threshold+eot``) only the
    predicted branch cuts, as the authors' EoT without a filter.  ``committed="any"`` fires the
    committed branch on any end-of-text the step committed, and ``predicted_mask="after"`` reads
    the mask after the commit (both this plugin's rule before it followed the authors' code);
    ``cut="committed"`` is the conservative variant without the predicted branch (its committed
    branch defaults to any committed end-of-text).  Cut positions hold end-of-text in the output
    and never enter a forward again (the core keeps live lengths from growing and feeds the model
    only the live width); a row ends when nothing before its cut is masked.  Composes with every
    remasking plugin: it only observes ``dllm_remask`` (a wrapper that returns the owner's answer
    unchanged) to learn the step's accepted positions and its mask before the commit.
    """

    @attrs.frozen
    class Options:
        """Attributes:
            cut: ``"predicted"`` (both branches: the paper's rule) or ``"committed"`` (only
                after a committed end-of-text, never on a prediction).
            committed: which committed end-of-text tokens cut: ``"accepted"`` (those the
                remasking plugin's own rule accepted, ``FilterCommit.accepted``: the authors')
                or ``"any"`` (any the step committed, top-k and forced commits included); none:
                ``"accepted"`` with ``cut="predicted"``, ``"any"`` with ``cut="committed"``.
            predicted_mask: the masked positions the predicted branch reads: ``"before"`` the
                step's commit (the authors') or ``"after"`` it.
        """

        cut: Literal["predicted", "committed"] = attrs.field(
            default="predicted", validator=attrs.validators.in_(("predicted", "committed")))
        committed: Literal["accepted", "any"] | None = attrs.field(default=None, validator=_committed_source)
        predicted_mask: Literal["before", "after"] = attrs.field(
            default="before", validator=attrs.validators.in_(("before", "after")))

        @property
        def committed_source(self) -> str:
            """``committed`` with its default resolved."""
            if self.committed is not None:
                return self.committed
            return "accepted" if self.cut == "predicted" else "any"

    def __init__(self, options=None):
        super().__init__(options)
        self.seen_step: int | None = None
        self.masked_before: torch.Tensor | None = None
        self.accepted: torch.Tensor | None = None

    @hookimpl(wrapper=True)
    def dllm_remask(self, state, proposal, plan):
        result = yield
        # What the step's truncation needs from before the commit: the rows and step are the
        # same in dllm_truncate, which runs right after the core applies this commit.
        self.seen_step = state.step
        self.masked_before = state.masked
        self.accepted = reported_accepted(result, tuple(state.masked.shape))
        return result

    @hookimpl
    def dllm_truncate(self, state, proposal) -> torch.Tensor:
        if self.seen_step != state.step or self.masked_before is None or \
                self.masked_before.shape != state.masked.shape:
            raise RuntimeError(f"eot's dllm_truncate ran at step {state.step} without its dllm_remask wrapper in "
                               "the same step; run both through the decode loop (dllm_strategies.decode.Run)")
        accepted = None
        if self.options.committed_source == "accepted":
            accepted = self.accepted if self.accepted is not None else torch.zeros_like(self.masked_before)
        masked = self.masked_before if self.options.predicted_mask == "before" else None
        return eot_cut(state, proposal, accepted=accepted, masked=masked,
                       predicted=self.options.cut == "predicted")
