"""The forward shared by the prefix and the dual cache (Fast-dLLM's approximate KV cache).

Each step is one of two forwards, both through ``model.logits`` (so the core meters them):

* **refresh**: when there is no cache or what it was built for no longer holds (see
  :mod:`dllm_kv_cache.snapshot`), one full forward over prompt + live response, exactly the
  core's default forward (2-D attention mask, position ids from it), with a ``DynamicCache``
  that keeps every layer's keys and values.  Its logits are this step's logits; its keys and
  values become the cache.
* **reuse**: otherwise, feed only the fresh span of response columns with the cache.  Each
  layer writes the span's new keys and values into the cache in place and attends to all
  positions; a 4-D mask (rows, 1, fed, prompt + width) hides left padding and cut positions,
  so the keys a row sees are exactly those of the default forward.  Position ids are each
  row's real prompt length plus the response column, as the default forward's.  The core
  counts a 4-D-masked call as the positions fed (rows x span), the real cost.

Right after a refresh, on an unchanged state, a reuse forward gives the default forward's
logits exactly (tests check it); as tokens are committed, cached keys go stale until the next
refresh: that is the approximation.

Shifted families (Dream) score column j from position j - 1, so the fresh span starts one
column earlier than the earliest window (the last prompt token for the first block); its logits
are then exact in the same sense.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.cache_utils import DynamicCache

from dllm_strategies import hookimpl
from dllm_strategies.defaults import model_inputs
from dllm_strategies.registry import Plugin
from dllm_strategies.state import DecodeState, Logits, Plan

from dllm_kv_cache.fresh_span import FreshSpanCache
from dllm_kv_cache.snapshot import CacheSnapshot
from dllm_kv_cache.support import CacheableModel, require_cacheable


class BlockCache(Plugin):
    """Base of :class:`~dllm_kv_cache.prefix.PrefixCache` and :class:`~dllm_kv_cache.dual.DualCache`:
    Fast-dLLM's block-refreshed approximate KV cache (Wu et al., arXiv 2505.22618).

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
            index = self.snapshot.match(state, plan) if self.snapshot is not None else None
            if index is not None:
                self._follow(index)
                return self._reuse(model, state)
            return self._refresh(model, state, plan)

    # ---- the two forwards ----------------------------------------------------------------
    def _refresh(self, model, state: DecodeState, plan: Plan) -> Logits:
        facts = self.model_facts
        self.snapshot, self.kv = None, None  # release the old keys and values before filling new ones
        width = int(state.live_length.max())
        ids, attention, positions = model_inputs(state, width)
        filled = DynamicCache()
        values = model.logits(ids, attention_mask=attention, position_ids=positions, logits_to_keep=width,
                              past_key_values=filled, use_cache=True)
        self.snapshot = CacheSnapshot.build(state, plan, width=width, keep_suffix=self.keep_suffix,
                                            shifted=facts.shifted)
        self.kv = FreshSpanCache.from_filled(filled)
        prompt_width = state.prompt.shape[1]
        self.kv.set_span(prompt_width + self.snapshot.fresh_start, prompt_width + self.snapshot.fresh_stop)
        return Logits(values=values, start=0)

    def _reuse(self, model, state: DecodeState) -> Logits:
        snap, facts = self.snapshot, self.model_facts
        P = state.prompt.shape[1]
        lo, hi = snap.fresh_start, snap.fresh_stop
        first = snap.scored_start  # lo is one column earlier for a shifted family (-1: the last prompt token)
        sequence = torch.cat([state.prompt, state.response], 1)
        ids = sequence[:, P + lo:P + hi]
        columns = torch.arange(lo, hi, device=state.device)
        positions = snap.prompt_length[:, None] + columns[None, :]
        visible = torch.cat([state.prompt_mask, state.live[:, :snap.width]], 1)  # (B, P + width)
        mask = visible[:, None, None, :].expand(-1, 1, hi - lo, -1).contiguous()  # as transformers builds its own
        if facts.additive_mask:
            mask = torch.zeros(mask.shape, dtype=facts.dtype, device=state.device).masked_fill(
                ~mask, torch.finfo(facts.dtype).min)
        values = model.logits(ids, attention_mask=mask, position_ids=positions, logits_to_keep=hi - first,
                              past_key_values=self.kv, use_cache=True)
        return Logits(values=values, start=first)

    def _follow(self, index: torch.Tensor) -> None:
        """Drop the cached rows that left the batch (finished rows)."""
        if index.numel() != self.snapshot.rows.numel():
            self.kv.select(index)
            self.snapshot = self.snapshot.take(index)
