"""Block-autoregressive decoding: the loop for models that decode one block after another and
keep every finished block in an exact KV cache (DiffusionGemma's encoder cache, a block-causal
masked model's cache of earlier blocks).

The steps are the decode loop's own (:func:`dllm_strategies.decode._step`, absorbing or
uniform process); :class:`BlockRun` decides which rows take each step and what a finished block
means for its row:

* **End of text.**  Once every position before an end-of-text token is decided, the row's text
  is over: the decided positions after that token hold the fill (pad) token.  Without lockstep
  the row is cut there and ends at once (Fast-dLLM v2's and LLaDA 2's early stop).
* **Lockstep** (``model.lockstep``, DiffusionGemma as ``generate`` decodes a batch): the rows of
  a batch share their open block; a row whose block ended waits until every row's has, and a
  row whose text is over keeps decoding later blocks (their tokens become pad) until every row's
  text is over.  A waiting row takes no step; a row whose text is over takes steps whose forwards
  are not charged to it (``generate`` counts decoder passes the same way).  This is what makes a
  seeded run draw the batch's random stream exactly as ``generate`` draws it.

The exact cache itself belongs to the model's forward: ``model.exact_cache(state)`` builds a
run's cache and ``cache.logits(model, state, plan, **kwargs)`` runs the encoder passes a step
needs (metered as ``encoder_forwards``, not NFE) and the one decoder pass (NFE).  The core's
default forward uses it (:mod:`dllm_strategies.defaults`); a forward plugin may call it with
extra model inputs (``self_conditioning``).
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import torch

from dllm_strategies.decode import Run, StepRecord, _step
from dllm_strategies.errors import StepLimitError
from dllm_strategies.state import DecodeState


def decided_prefix(state: DecodeState) -> torch.Tensor:
    """(B,) per row, the number of leading live response positions that are decided."""
    undecided = state.masked
    first = torch.where(undecided.any(1), undecided.int().argmax(1), state.live_length)
    return torch.minimum(first, state.live_length)


def _rows_in_block(state: DecodeState, block: int) -> torch.Tensor | None:
    """(n,) the rows with an undecided position in ``block``, or None when there are none."""
    L = state.config.block_length
    here = state.masked[:, block * L:(block + 1) * L].any(1)
    return here.nonzero().squeeze(1) if bool(here.any()) else None


def open_block(state: DecodeState) -> torch.Tensor:
    """(B,) per row, the block index of its first undecided position (a large value when none)."""
    prefix = decided_prefix(state)
    block = torch.div(prefix, state.config.block_length, rounding_mode="floor")
    return torch.where(state.masked.any(1), block, torch.full_like(block, 1 << 30))


def text_end(state: DecodeState) -> torch.Tensor:
    """(B,) per row, the column of the first end-of-text token among its decided leading
    positions, or -1 when there is none yet."""
    eot = torch.tensor(state.config.eot_ids or (state.config.fill_id,), device=state.device)
    hit = torch.isin(state.response, eot) & (state.columns[None, :] < decided_prefix(state)[:, None])
    return torch.where(hit.any(1), hit.int().argmax(1), torch.full_like(state.live_length, -1))


@attrs.define
class BlockRun(Run):
    """The decode loop of a block-autoregressive model (see the module docstring).

    Attributes:
        lockstep: rows share their open block, and rows whose text is over keep decoding.
        over: (B,) rows whose text is over (an end-of-text token with everything before it decided).
    """

    lockstep: bool = False
    over: torch.Tensor | None = None
    block: int | None = None  # lockstep: the block the batch is decoding
    any_over: bool = False  # whether some row's text is over (read every step, changes rarely)
    # lockstep: per block, the function of the undecided positions giving the rows still in it
    in_block: dict = attrs.field(factory=dict)

    @classmethod
    @torch.no_grad()
    def begin(cls, strategy: Any, model: Any, state: DecodeState) -> BlockRun:
        run = super(BlockRun, cls).begin(strategy, model, state)  # attrs rebuilds the class: name it
        run.lockstep = bool(getattr(model, "lockstep", False))
        run.over = torch.zeros(state.batch_size, dtype=torch.bool, device=state.device)
        return run

    def stepping(self) -> torch.Tensor:
        """(n,) the rows that take the next step."""
        state = self.state
        active = ~state.finished
        if self.lockstep:
            if self.block is not None:  # rows only ever leave a block: those still in it step
                if self.block not in self.in_block:
                    self.in_block[self.block] = functools.partial(_rows_in_block, block=self.block)
                rows = state.of_masked(self.in_block[self.block])  # (a finished row has nothing undecided)
                if rows is not None:
                    return rows
            if bool(active.any()):
                block = open_block(state)
                self.block = int(block[active].min())
                active = active & (block == self.block)
        return active.nonzero().squeeze(1)

    def _advance(self) -> StepRecord:
        state, config = self.state, self.state.config
        live = self.stepping()
        if state.step >= config.max_steps:
            raise StepLimitError(
                f"decoding reached max_steps={config.max_steps} with undecided positions left in rows "
                f"{live.tolist()}; plugin {self.strategy.owners['dllm_remask']!r} keeps re-masking "
                "(raise max_steps or make it revoke less)")
        whole = live.numel() == state.batch_size
        part = state if whole else state.take(live)
        record = _step(self.strategy, self.metered, part, live)
        after = record.after
        ghosts = self.over if whole else self.over.index_select(0, live)
        if self.any_over and bool(ghosts.any()):  # a row whose text is over is not charged for lockstep's extra steps
            keep = ghosts[:, None]
            after = after.evolve(nfe=torch.where(ghosts, part.nfe, after.nfe),
                                 taken=torch.where(ghosts, part.taken, after.taken),
                                 block_nfe=torch.where(keep, part.block_nfe, after.block_nfe))
        if whole:
            self.forced += record.forced
        else:
            self.forced[live] += record.forced
        merged = after if whole else state.put(live, after)
        self.state = merged if merged.masked is state.masked else self._end_texts(merged)  # the same undecided
        # positions (the view carried along): nothing was decided, no text can have ended
        if self.frames is not None:
            self.frames.append(self.state.response.clone())
        if whole and self.state is record.after:  # the step's own result stands
            return record
        return attrs.evolve(record, after=self.state if whole else self.state.take(live))

    def _end_texts(self, state: DecodeState) -> DecodeState:
        """Apply the end-of-text rule (module docstring) after a step."""
        if not bool((state.commit_step == state.step - 1).any()):
            return state  # nothing was decided this step: no text can have ended
        end = text_end(state)
        has = end >= 0
        if not bool(has.any()):
            return state
        fill = state.config.fill_id
        cols = state.columns[None, :]
        after = has[:, None] & (cols > end[:, None]) & ~state.masked
        state = state.evolve(response=state.response.masked_fill(after, fill))
        self.over = self.over | has
        self.any_over = True
        if self.lockstep and not bool(self.over.all()):
            return state
        cut = self.over & ~state.finished
        if not bool(cut.any()):
            return state
        live_length = torch.where(cut, torch.minimum(end + 1, state.live_length), state.live_length)
        gone = (cols >= live_length[:, None]) & (cols < state.live_length[:, None])
        return state.evolve(
            live_length=live_length, response=state.response.masked_fill(gone, fill),
            commit_step=state.commit_step.masked_fill(gone, -1), finished=state.finished | cut)
