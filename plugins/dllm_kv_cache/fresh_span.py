"""A transformers ``Cache`` that holds every position's keys and values and lets a forward
overwrite one span of them.

Layout: per layer, keys and values of shape (rows, kv_heads, prompt + response, head_dim),
exactly as a full forward left them (post-RoPE keys, so positions are baked in).  A cached
forward feeds only the positions of the *fresh span* ``[start, stop)``; each attention layer
writes their new keys and values into that span and attends to the whole buffer, so positions
outside the span are read from the cache and positions inside it are fresh.  Nothing is
concatenated per step, and the buffer never grows.  Which key a query may see is the 4-D
attention mask's business (padding, cut positions), not the cache's.

Rows of a batch need not share one span: a forward may feed the union of their spans and give
``own`` (rows, span), the columns each row takes fresh; every other column of the union keeps
that row's cached keys and values, so what a row attends to is exactly what it would attend to
alone.  A forward may also run over some of the cached rows only (``rows``): each layer then
attends to a gathered copy of theirs.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class FreshSpanLayer(CacheLayerMixin):
    """One attention layer's keys and values; ``update`` writes the fresh span."""

    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.start, self.stop = 0, keys.shape[-2]
        self.rows: torch.Tensor | None = None  # the cached rows the forward feeds (None: all)
        self.own: torch.Tensor | None = None  # (rows, 1, span, 1) bool: columns each row takes fresh (None: all)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("FreshSpanLayer is built from a filled cache; it is never lazily initialised")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        width = self.stop - self.start
        if key_states.shape[-2] != width:
            raise RuntimeError(f"the forward fed {key_states.shape[-2]} positions but the cache's fresh span "
                               f"[{self.start}, {self.stop}) holds {width}")
        if self.rows is None:
            keys, values = self.keys, self.values
        else:  # a copy: the other rows' buffers are not this forward's
            keys, values = self.keys.index_select(0, self.rows), self.values.index_select(0, self.rows)
        span = slice(self.start, self.stop)
        if self.own is not None:
            key_states = torch.where(self.own, key_states, keys[:, :, span])
            value_states = torch.where(self.own, value_states, values[:, :, span])
        # Writing in place is safe: a row's own span is fed afresh by every cached forward until
        # its next refresh, so the buffer's copy of it is never read as a cached key.
        keys[:, :, span] = key_states
        values[:, :, span] = value_states
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_seq_length(self) -> int:
        return self.keys.shape[-2] - (self.stop - self.start)

    def get_max_length(self) -> int:
        return self.keys.shape[-2]

    def select(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` (rows that finished leave the batch)."""
        self.keys = self.keys.index_select(0, index)
        self.values = self.values.index_select(0, index)

    def overwrite(self, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Rows ``index`` get the keys and values of a new full forward over their first
        ``keys.shape[-2]`` positions (the rest of the buffer is past their live length)."""
        length = keys.shape[-2]
        self.keys[index, :, :length] = keys
        self.values[index, :, :length] = values


def _full_layers(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "is_sliding", False) or getattr(layer, "keys", None) is None:
            raise RuntimeError(f"cache layer {i} ({type(layer).__name__}) holds no full keys and values")
        out.append((layer.keys, layer.values))
    return out


class FreshSpanCache(Cache):
    """Keys and values of all layers, filled by a full forward; see the module docstring."""

    def __init__(self, layers: list[FreshSpanLayer]):
        super().__init__(layers=layers)

    @classmethod
    def from_filled(cls, cache: Cache) -> FreshSpanCache:
        """Take over the tensors a full forward stored in ``cache`` (e.g. a ``DynamicCache``)."""
        return cls([FreshSpanLayer(keys, values) for keys, values in _full_layers(cache)])

    @property
    def rows(self) -> int:
        return self.layers[0].keys.shape[0]

    @property
    def length(self) -> int:
        """Positions held per row (prompt + cached response width)."""
        return self.layers[0].keys.shape[-2]

    def set_span(self, start: int, stop: int, *, rows: torch.Tensor | None = None,
                 own: torch.Tensor | None = None) -> None:
        """The next forwards feed positions ``[start, stop)`` of cached rows ``rows`` (None: all);
        ``own`` (fed rows, stop - start) bool: the positions each row takes fresh (None: all)."""
        if not 0 <= start < stop <= self.length:
            raise ValueError(f"fresh span [{start}, {stop}) does not fit a cache of {self.length} positions")
        mask = None if own is None else own[:, None, :, None]
        for layer in self.layers:
            layer.start, layer.stop, layer.rows, layer.own = start, stop, rows, mask

    def select(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` of every layer."""
        for layer in self.layers:
            layer.select(index)

    def overwrite(self, index: torch.Tensor, cache: Cache) -> None:
        """Rows ``index`` take the keys and values a full forward over them stored in ``cache``."""
        filled = _full_layers(cache)
        if len(filled) != len(self.layers) or filled[0][0].shape[-2] > self.length:
            raise RuntimeError(f"a refresh of {filled[0][0].shape[-2]} positions in {len(filled)} layers does not "
                               f"fit a cache of {self.length} positions in {len(self.layers)} layers")
        for layer, (keys, values) in zip(self.layers, filled):
            layer.overwrite(index, keys, values)
