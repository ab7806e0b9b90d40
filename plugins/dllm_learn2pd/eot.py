"""Learn2PD's End-of-Text truncation (hook ``dllm_truncate``)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from dllm_strategies import hookimpl
from dllm_strategies.registry import Plugin
from dllm_strategies.state import DecodeState, Proposal


def eot_cut(state: DecodeState, proposal: Proposal, *, predicted: bool = True) -> torch.Tensor:
    """(B,) live lengths after Learn2PD's End-of-Text rule, applied after a step's commit.

    The end-of-text token is ``state.config.fill_id``.  If the step committed an end-of-text
    token, cut right after the first one it committed; otherwise (only when ``predicted``), if a
    still-masked live position predicts end-of-text, cut right after the most confident of those
    (that position stays masked and is decoded later).  Rows with neither keep their length.
    """
    eot = state.config.fill_id
    live = state.live
    committed = live & (state.commit_step == state.step) & (state.response == eot)
    has_committed = committed.any(1)
    first = committed.int().argmax(1)  # first True (argmax returns the first maximum)
    cut = torch.where(has_committed, first + 1, state.live_length)
    if predicted:
        predicting = live & state.masked & (proposal.tokens == eot)
        best = proposal.confidence.masked_fill(~predicting, -1.0).argmax(1)
        cut = torch.where(~has_committed & predicting.any(1), best + 1, cut)
    return cut


class EotTruncation(Plugin):
    """End-of-Text truncation from Learn2PD (Bao et al., "Learning to Parallel", arXiv 2509.25188).

    After each step's commit: if the step committed an end-of-text token, cut the row right after
    the first one; otherwise, if any still-masked position predicts end-of-text, cut right after
    the most confident of those (``cut="predicted"``, the paper's rule and the default).
    ``cut="committed"`` is the conservative variant that only cuts after a committed one.
    Cut positions hold end-of-text in the output and never enter a forward again (the core keeps
    live lengths from growing and feeds the model only the live width); a row ends when nothing
    before its cut is masked.  Composes with every remasking plugin.
    """

    @attrs.frozen
    class Options:
        """Attributes:
            cut: ``"predicted"`` (also cut after the most confident masked end-of-text
                prediction: the paper's rule) or ``"committed"`` (only after a committed one).
        """

        cut: Literal["predicted", "committed"] = attrs.field(
            default="predicted", validator=attrs.validators.in_(("predicted", "committed")))

    @hookimpl
    def dllm_truncate(self, state, proposal) -> torch.Tensor:
        return eot_cut(state, proposal, predicted=self.options.cut == "predicted")
