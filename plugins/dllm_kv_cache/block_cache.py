"""The forward shared by the prefix and the dual cache (Fast-dLLM's approximate KV cache).

Every row's cache is its own: filled by a full forward over that row, refreshed at that row's
block boundaries (see :mod:`dllm_kv_cache.snapshot`), whatever the other rows of the batch do.
A step runs at most two forwards, both through ``model.logits`` with ``rows=`` naming the rows
that take part (the core charges each row's NFE only for the forwards it took part in):

* **refresh**: the rows with no cache or a stale one, together (rows that cross a block boundary
  at the same step share it): one full forward over their prompt + live response, exactly the
  core's default forward (2-D attention mask, position ids from it), with a ``DynamicCache``
  that keeps every layer's keys and values.  Its logits are those rows' logits; its keys and
  values become their cache.
* **reuse**: the other rows, together: feed the union of their fresh spans of response columns
  with the cache.  Each layer writes, per row, only that row's own span's new keys and values;
  the rest of the union keeps the row's cached ones, so every row attends to exactly the keys it
  would attend to alone.  A 4-D mask (rows, 1, fed, prompt + width) hides left padding and cut
  positions; position ids are each row's real prompt length plus the response column, as the
  default forward's.  The core counts a 4-D-masked call as the positions fed (rows x union).

The step's :class:`~dllm_strategies.state.Logits` say per row (``cover``) which columns the row
has: a refresh row its live response, a reuse row its window up to its fresh stop, as it would
decoded alone.  So a greedy row's tokens, steps and NFE never depend on its batch.

Right after a refresh, on an unchanged state, a reuse forward gives the default forward's
logits exactly (tests check it); as tokens are committed, cached keys go stale until the next
refresh: that is the approximation.

Shifted families (Dream) score column j from position j - 1, so a row's fresh span starts one
column earlier than its window (the last prompt token for the first block); its logits are then
exact in the same sense.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from transformers.cache_utils import DynamicCache

from dllm_strategies import DecodeState, Logits, Plan, Plugin, hookimpl
from dllm_strategies.defaults import model_inputs

from dllm_kv_cache.fresh_span import FreshSpanCache
from dllm_kv_cache.snapshot import CacheSnapshot
from dllm_kv_cache.support import CacheableModel, require_cacheable


@attrs.frozen
class _Part:
    """One forward's share of a step: its rows (positions in the state), their logits for
    columns ``[start, start + W)``, and each row's own columns ``[lo, hi)`` among them."""

    rows: torch.Tensor = attrs.field(eq=False)
    values: torch.Tensor = attrs.field(eq=False)
    start: int
    lo: torch.Tensor = attrs.field(eq=False)
    hi: torch.Tensor = attrs.field(eq=False)


class BlockCache(Plugin):
    """Base of :class:`~dllm_kv_cache.prefix.PrefixCache` and :class:`~dllm_kv_cache.dual.DualCache`:
    Fast-dLLM's block-refreshed approximate KV cache (Wu et al., arXiv 2505.22618), one cache per row.

    Subclasses set ``name`` (the entry-point name, for messages) and ``keep_suffix`` (cache the
    positions after the block too).  One instance serves one run (per-run state on ``self``).
    """

    name: ClassVar[str] = "block_cache"
    keep_suffix: ClassVar[bool] = False
    # Needs a real transformers decoder: the invariant kit's fake models are refused at dllm_start.
    supports_fake_models: ClassVar[bool] = False

    def __init__(self, options: Any = None):
        super().__init__(options)
        self.model_facts: CacheableModel | None = None
        self.snapshot: CacheSnapshot | None = None
        self.kv: FreshSpanCache | None = None

    @hookimpl
    def dllm_start(self, state: DecodeState, model) -> None:
        self.model_facts = require_cacheable(self.name, model)
        self.snapshot, self.kv = None, None

    @hookimpl
    def dllm_forward(self, model, state: DecodeState, plan: Plan) -> Logits:
        if self.model_facts is None:  # called outside a run (e.g. directly in a test)
            self.model_facts = require_cacheable(self.name, model)
        with torch.no_grad():
            stale = self._follow(state, plan)
            # one host synchronisation: the stale rows first, each group in batch order
            order = torch.argsort((~stale).to(torch.uint8), stable=True)
            count = int(stale.sum())
            refresh, reuse = order[:count], order[count:]
            parts = []
            if count:
                parts.append(self._refresh(model, state, plan, refresh, stale))
            if reuse.numel():
                parts.append(self._reuse(model, state, reuse))
            return _assemble(parts, state)

    # ---- which rows still have a cache that serves them --------------------------------------
    def _follow(self, state: DecodeState, plan: Plan) -> torch.Tensor:
        """(B,) bool: rows to refresh.  Drops the cached rows that left the batch (finished)."""
        snap = self.snapshot
        index = snap.index(state) if snap is not None else None
        if index is None:
            return torch.ones(state.batch_size, dtype=torch.bool, device=state.device)
        if index.numel() != snap.rows.numel():
            self.kv.select(index)
            self.snapshot = snap = snap.take(index)
        return snap.stale(state, plan)

    # ---- the two forwards ----------------------------------------------------------------
    def _refresh(self, model, state: DecodeState, plan: Plan, rows: torch.Tensor, stale: torch.Tensor) -> _Part:
        facts = self.model_facts
        whole = rows.numel() == state.batch_size
        if whole:
            self.snapshot, self.kv = None, None  # release the old keys and values before filling new ones
        part = state if whole else state.take(rows)
        width = int(part.live_length.max())
        ids, attention, positions = model_inputs(part, width)
        filled = DynamicCache()
        values = model.logits(ids, attention_mask=attention, position_ids=positions, logits_to_keep=width,
                              rows=rows, use_cache=True, **{facts.cache_keyword: filled})
        if whole:
            self.kv = FreshSpanCache.from_filled(filled)
            self.snapshot = CacheSnapshot.build(state, plan, width=width, keep_suffix=self.keep_suffix,
                                                shifted=facts.shifted)
        else:  # the other rows keep their caches; live lengths never grow, so the buffer is wide enough
            self.kv.overwrite(rows, filled)
            self.snapshot = self.snapshot.renew(state, plan, stale, shifted=facts.shifted)
        return _Part(rows=rows, values=values, start=0, lo=torch.zeros_like(part.live_length), hi=part.live_length)

    def _reuse(self, model, state: DecodeState, rows: torch.Tensor) -> _Part:
        snap, facts = self.snapshot, self.model_facts
        whole = rows.numel() == state.batch_size
        part = state if whole else state.take(rows)
        starts, stops, prompt_length = (t.index_select(0, rows) for t in (snap.fresh_start, snap.fresh_stop,
                                                                            snap.prompt_length))
        lo, hi, latest, earliest = torch.stack([starts.min(), stops.max(), starts.max(), stops.min()]).tolist()
        shift = int(facts.shifted)
        P = state.prompt.shape[1]
        ids = torch.cat([part.prompt, part.response], 1)[:, P + lo:P + hi]
        columns = torch.arange(lo, hi, device=state.device)
        positions = prompt_length[:, None] + columns[None, :]
        visible = torch.cat([part.prompt_mask, part.live[:, :snap.width]], 1)  # (rows, P + width)
        mask = visible[:, None, None, :].expand(-1, 1, hi - lo, -1).contiguous()  # as transformers builds its own
        if facts.additive_mask:
            mask = torch.zeros(mask.shape, dtype=facts.dtype, device=state.device).masked_fill(
                ~mask, torch.finfo(facts.dtype).min)
        # rows whose own span is narrower than the union take the rest of it from their cache
        own = None if (latest, earliest) == (lo, hi) else (columns >= starts[:, None]) & (columns < stops[:, None])
        self.kv.set_span(P + lo, P + hi, rows=None if whole else rows, own=own)
        values = model.logits(ids, attention_mask=mask, position_ids=positions, logits_to_keep=hi - lo - shift,
                              rows=rows, use_cache=True, **{facts.cache_keyword: self.kv})
        return _Part(rows=rows, values=values, start=lo + shift, lo=starts + shift, hi=stops)


def _assemble(parts: list[_Part], state: DecodeState) -> Logits:
    """The step's logits from its forwards, with each row's own columns as ``cover`` (None when
    every row has every column)."""
    B = state.batch_size
    if len(parts) == 1:
        values, start = parts[0].values, parts[0].start  # all rows, in batch order
    else:
        start = min(p.start for p in parts)
        stop = max(p.start + p.values.shape[1] for p in parts)
        values = parts[0].values.new_zeros(B, stop - start, parts[0].values.shape[2])
        for p in parts:
            values[p.rows, p.start - start:p.start - start + p.values.shape[1]] = p.values
    lo = torch.zeros(B, dtype=torch.long, device=state.device)
    hi = torch.zeros(B, dtype=torch.long, device=state.device)
    for p in parts:
        lo.index_copy_(0, p.rows, p.lo.long())
        hi.index_copy_(0, p.rows, p.hi.long())
    columns = start + torch.arange(values.shape[1], device=state.device)
    cover = (columns[None, :] >= lo[:, None]) & (columns[None, :] < hi[:, None])
    return Logits(values=values, start=start, cover=None if bool(cover.all()) else cover)
