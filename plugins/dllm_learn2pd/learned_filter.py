"""Learn2PD's learned filter (hook ``dllm_remask``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.errors import ConfigError
from dllm_strategies.plugin import Plugin

from dllm_learn2pd.accepted import FilterCommit
from dllm_learn2pd.features import PADDING, block_confidences, place_block
from dllm_learn2pd.filter_model import load_filter


def _threshold(instance, attribute, value) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (or be none for the filter file's), got {value}")


class LearnedFilter(Plugin):
    """The learned filter of Learn2PD (Bao et al., "Learning to Parallel", arXiv 2509.25188).

    A small MLP (``Linear(32,32) -> ReLU -> Linear(32,32)``) trained to imitate the EGP oracle
    reads the top-1 softmax confidence of each of the block's positions (committed or not) and
    accepts a still-masked position when ``sigmoid(logit) > threshold`` (the paper's 0.96; the
    threshold stored with the filter, 0.995 for the shipped one).  The step commits
    the union of the accepted positions and the baseline's own top-k for the step (the schedule's
    budget, as LLaDA's low-confidence remasking would), so progress never depends on the filter;
    it returns a :class:`~dllm_learn2pd.accepted.FilterCommit` whose ``accepted`` are the
    network's positions alone, which ``eot`` reads.  Block positions cut by End-of-Text
    truncation read 0 (``padding="zero"``, the authors' zero-padding of a shortened block) or 1.0
    (``padding="settled"``).  The filter's width must equal the block length.  Train one with
    ``dllm-strategies train-filter`` (docs/learn2pd.md).
    """

    @attrs.frozen
    class Options:
        """Attributes:
            path: a filter file (``.safetensors`` with its ``.json``); none: the shipped default.
            threshold: accept threshold on the filter's sigmoid; none: the file's (0.995 for
                the shipped filter).
            padding: the feature of a block position cut by End-of-Text truncation (or not
                covered by the step's logits): ``"zero"`` (the authors') or ``"settled"`` (1.0,
                a settled position, this plugin's value before it followed the authors' code).
        """

        path: Path | None = None
        threshold: float | None = attrs.field(default=None, validator=_threshold)
        padding: Literal["zero", "settled"] = attrs.field(
            default="zero", validator=attrs.validators.in_(tuple(PADDING)))

    def __init__(self, options=None):
        super().__init__(options)
        self.filter = load_filter(self.options.path)
        self.block_lengths = (self.filter.width,)  # the only block length it can read (the invariant kit uses it)
        self.threshold = self.filter.threshold if self.options.threshold is None else self.options.threshold

    @hookimpl
    def dllm_start(self, state) -> None:
        width = self.filter.width
        if state.config.block_length != width:
            raise ConfigError(
                f"the learned filter {str(self.filter.path)!r} reads blocks of {width} positions but block_length is "
                f"{state.config.block_length}; decode with block_length={width}, or train a filter for this block "
                f"length (dllm-strategies train-filter --block-length {state.config.block_length})"
            )
        self.network = self.filter.network.to(state.device)

    @hookimpl
    def dllm_remask(self, state, proposal, plan) -> FilterCommit:
        G, width = state.config.gen_length, self.filter.width
        window = plan.window(state)
        features = block_confidences(proposal.logits, plan.window_start, width, state.live_length, G,
                                     pad=PADDING[self.options.padding])
        with torch.no_grad():
            accept = torch.sigmoid(self.network(features)) > self.threshold
        accepted = place_block(accept, plan.window_start, G, False) & window
        return FilterCommit(mask=accepted | ops.top_k_mask(proposal.scores, plan.budget, window), accepted=accepted)
