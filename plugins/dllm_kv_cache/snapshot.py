"""What a block cache was built for, and whether that still holds.

A cache is filled by one full forward over the live rows.  From then on the batch feeds only
its *fresh span* of response columns ``[fresh_start, fresh_stop)``; every other position's keys
and values come from the cache:

* ``fresh_start`` is the earliest window start among the rows (rows of a batch can be in
  different blocks: each row's window is its own first block with a masked position), one
  column earlier for a shifted family (Dream), whose logits for column j come from position
  j - 1.  A row whose own window starts later gets the columns between ``fresh_start`` and its
  window fresh as well: those are fed for the batch anyway.
* ``fresh_stop`` is the cached response width (prefix cache: everything after the block start
  is fed), or the last window end among the rows (dual cache: the suffix after the blocks is
  cached too).

The cache is refreshed, by a new full forward, as soon as what it was built for no longer holds
for the rows still live: a row's window moved (a block boundary), a row's live length shrank
(end-of-text truncation removed positions the cached keys attended to), or a token inside a
cached region changed (a strategy that commits outside its window).  Rows that finish leave
the batch; the cache follows them (``take``) without a refresh.
"""

from __future__ import annotations

import attrs
import torch

_tensor = attrs.field(eq=False, repr=False)


@attrs.frozen
class CacheSnapshot:
    """The rows a cache holds and the state it was built from.

    Attributes:
        rows: (B,) batch indices of the cached rows (ascending, as ``DecodeState.rows``).
        window_start / window_end: (B,) each row's window when the cache was filled.
        live_length: (B,) each row's live length then.
        response: (B, G) the response then.
        cached: (B, G) bool, response positions whose keys and values are read from the cache.
        prompt_length: (B,) real prompt tokens per row (position ids of the response follow them).
        width: response columns the cache holds (the widest live length when it was filled).
        fresh_start / fresh_stop: response columns fed by every cached forward (one before
            ``scored_start`` for a shifted family: -1 is the last prompt position).
        scored_start: the first response column a cached forward scores (the earliest window).
        check_window_end: the fresh span depends on window ends too (dual cache).
    """

    rows: torch.Tensor = _tensor
    window_start: torch.Tensor = _tensor
    window_end: torch.Tensor = _tensor
    live_length: torch.Tensor = _tensor
    response: torch.Tensor = _tensor
    cached: torch.Tensor = _tensor
    prompt_length: torch.Tensor = _tensor
    width: int = 0
    fresh_start: int = 0
    fresh_stop: int = 0
    scored_start: int = 0
    check_window_end: bool = False

    @classmethod
    def build(cls, state, plan, *, width: int, keep_suffix: bool, shifted: bool) -> CacheSnapshot:
        """The snapshot of a cache filled from ``state`` (a full forward over ``width`` response columns)."""
        scored = int(plan.window_start.min())
        start = scored - int(shifted)
        if keep_suffix:
            stop = int(torch.minimum(plan.window_end, state.live_length).max())
        else:
            stop = width
        cols = state.columns[None, :]
        cached = (cols < start) | ((cols >= stop) & state.live)
        return cls(
            rows=state.rows, window_start=plan.window_start, window_end=plan.window_end,
            live_length=state.live_length, response=state.response, cached=cached,
            prompt_length=state.prompt_mask.sum(1), width=width, fresh_start=start, fresh_stop=stop,
            scored_start=scored, check_window_end=keep_suffix,
        )

    def match(self, state, plan) -> torch.Tensor | None:
        """Positions of ``state``'s rows among the cached rows if the cache still serves ``state``
        and ``plan``, else None (refresh).  One host synchronisation."""
        index = torch.searchsorted(self.rows, state.rows).clamp(max=self.rows.numel() - 1)
        ok = (self.rows.index_select(0, index) == state.rows).all()
        ok = ok & (plan.window_start == self.window_start.index_select(0, index)).all()
        if self.check_window_end:
            ok = ok & (plan.window_end == self.window_end.index_select(0, index)).all()
        ok = ok & (state.live_length == self.live_length.index_select(0, index)).all()
        changed = (state.response != self.response.index_select(0, index)) & self.cached.index_select(0, index)
        return index if bool(ok & ~changed.any()) else None

    def take(self, index: torch.Tensor) -> CacheSnapshot:
        """The snapshot of rows ``index`` only (the others finished)."""
        pick = {name: getattr(self, name).index_select(0, index)
                for name in ("rows", "window_start", "window_end", "live_length", "response", "cached",
                             "prompt_length")}
        return attrs.evolve(self, **pick)
