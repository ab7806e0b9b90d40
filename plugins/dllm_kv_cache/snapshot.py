"""What each row's cache was built for, and whether that still holds.

A row's cache is filled by a full forward over it.  From then on the row feeds only its *fresh
span* of response columns ``[fresh_start, fresh_stop)``; every other position's keys and values
come from its cache:

* ``fresh_start`` is the row's window start, one column earlier for a shifted family (Dream),
  whose logits for column j come from position j - 1 (-1: the last prompt position).
* ``fresh_stop`` is the row's live length (prefix cache: everything after the block start is
  fed), or its window end (dual cache: the suffix after the block is cached too).

A row's cache is refreshed, by a new full forward over it, as soon as what it was built for no
longer holds for that row: its window moved (a block boundary), its live length shrank
(end-of-text truncation removed positions its cached keys attended to), or a token it reads
from the cache changed (a strategy that commits outside its window).  Everything here is per
row, so a row's refreshes are those it would have decoded alone; the other rows keep their
caches.  Rows that finish leave the batch; the cache follows them (``take``) without a refresh.
"""

from __future__ import annotations

import attrs
import torch

_tensor = attrs.field(eq=False, repr=False)
_ROWS = ("rows", "window_start", "window_end", "live_length", "response", "cached", "prompt_length",
         "fresh_start", "fresh_stop")


@attrs.frozen
class CacheSnapshot:
    """The rows a cache holds and, per row, the state its keys and values were built from.

    Attributes:
        rows: (B,) batch indices of the cached rows (ascending, as ``DecodeState.rows``).
        window_start / window_end: (B,) each row's window when its cache was filled.
        live_length: (B,) each row's live length then.
        response: (B, G) the response then.
        cached: (B, G) bool, response positions whose keys and values a row reads from its cache.
        prompt_length: (B,) real prompt tokens per row (position ids of the response follow them).
        fresh_start / fresh_stop: (B,) response columns each row feeds in a cached forward
            (``fresh_start`` is one before the window for a shifted family).
        width: response columns the cache buffer holds (the widest live length when it was
            filled; no row's live length exceeds it, as live lengths never grow).
        check_window_end: the fresh span depends on window ends too (dual cache).
    """

    rows: torch.Tensor = _tensor
    window_start: torch.Tensor = _tensor
    window_end: torch.Tensor = _tensor
    live_length: torch.Tensor = _tensor
    response: torch.Tensor = _tensor
    cached: torch.Tensor = _tensor
    prompt_length: torch.Tensor = _tensor
    fresh_start: torch.Tensor = _tensor
    fresh_stop: torch.Tensor = _tensor
    width: int = 0
    check_window_end: bool = False

    @classmethod
    def build(cls, state, plan, *, width: int, keep_suffix: bool, shifted: bool) -> CacheSnapshot:
        """The snapshot of caches filled from every row of ``state`` (buffer of ``width`` response columns)."""
        start = plan.window_start - int(shifted)
        stop = torch.minimum(plan.window_end, state.live_length) if keep_suffix else state.live_length
        cols = state.columns[None, :]
        cached = (cols < start[:, None]) | ((cols >= stop[:, None]) & state.live)
        return cls(
            rows=state.rows, window_start=plan.window_start, window_end=plan.window_end,
            live_length=state.live_length, response=state.response, cached=cached,
            prompt_length=state.prompt_mask.sum(1), fresh_start=start, fresh_stop=stop, width=width,
            check_window_end=keep_suffix,
        )

    def index(self, state) -> torch.Tensor | None:
        """Positions of ``state``'s rows among the cached rows, or None when a row is not cached."""
        index = torch.searchsorted(self.rows, state.rows).clamp(max=self.rows.numel() - 1)
        return index if bool((self.rows.index_select(0, index) == state.rows).all()) else None

    def stale(self, state, plan) -> torch.Tensor:
        """(B,) bool: the rows whose cache no longer serves ``state`` and ``plan`` (same rows as
        the snapshot, in order: :meth:`take` it first)."""
        moved = plan.window_start != self.window_start
        if self.check_window_end:
            moved = moved | (plan.window_end != self.window_end)
        cut = state.live_length != self.live_length
        changed = ((state.response != self.response) & self.cached).any(1)
        return moved | cut | changed

    def renew(self, state, plan, refreshed: torch.Tensor, *, shifted: bool) -> CacheSnapshot:
        """The snapshot after the rows where ``refreshed`` (B,) is True were filled again from
        ``state`` (same rows as the snapshot, in order); the buffer keeps its width."""
        new = CacheSnapshot.build(state, plan, width=self.width, keep_suffix=self.check_window_end, shifted=shifted)
        pick = {}
        for name in _ROWS:
            old, fresh = getattr(self, name), getattr(new, name)
            where = refreshed.reshape(-1, *([1] * (old.dim() - 1)))
            pick[name] = torch.where(where, fresh, old)
        return attrs.evolve(self, **pick)

    def take(self, index: torch.Tensor) -> CacheSnapshot:
        """The snapshot of rows ``index`` only (the others finished)."""
        return attrs.evolve(self, **{name: getattr(self, name).index_select(0, index) for name in _ROWS})
