"""A transformers ``Cache`` that holds every position's keys and values and lets a forward
overwrite one span of them in place.

Layout: per layer, keys and values of shape (rows, kv_heads, prompt + response, head_dim),
exactly as a full forward left them (post-RoPE keys, so positions are baked in).  A cached
forward feeds only the positions of the *fresh span* ``[start, stop)``; each attention layer
writes their new keys and values into that span and attends to the whole buffer, so positions
outside the span are read from the cache and positions inside it are fresh.  Nothing is
concatenated or copied per step, and the buffer never grows.  Which key a query may see is the
4-D attention mask's business (padding, cut positions), not the cache's.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class FreshSpanLayer(CacheLayerMixin):
    """One attention layer's keys and values; ``update`` writes the fresh span in place."""

    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.start, self.stop = 0, keys.shape[-2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("FreshSpanLayer is built from a filled cache; it is never lazily initialised")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        width = self.stop - self.start
        if key_states.shape[-2] != width:
            raise RuntimeError(f"the forward fed {key_states.shape[-2]} positions but the cache's fresh span "
                               f"[{self.start}, {self.stop}) holds {width}")
        self.keys[:, :, self.start:self.stop] = key_states
        self.values[:, :, self.start:self.stop] = value_states
        return self.keys, self.values

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


class FreshSpanCache(Cache):
    """Keys and values of all layers, filled by one full forward; see the module docstring."""

    def __init__(self, layers: list[FreshSpanLayer]):
        super().__init__(layers=layers)

    @classmethod
    def from_filled(cls, cache: Cache) -> FreshSpanCache:
        """Take over the tensors a full forward stored in ``cache`` (e.g. a ``DynamicCache``)."""
        layers = []
        for i, layer in enumerate(cache.layers):
            if getattr(layer, "is_sliding", False) or getattr(layer, "keys", None) is None:
                raise RuntimeError(f"cache layer {i} ({type(layer).__name__}) holds no full keys and values")
            layers.append(FreshSpanLayer(layer.keys, layer.values))
        return cls(layers)

    @property
    def rows(self) -> int:
        return self.layers[0].keys.shape[0]

    @property
    def length(self) -> int:
        """Positions held per row (prompt + cached response width)."""
        return self.layers[0].keys.shape[-2]

    def set_span(self, start: int, stop: int) -> None:
        """Positions ``[start, stop)`` of the buffer are fed (and overwritten) by the next forwards."""
        if not 0 <= start < stop <= self.length:
            raise ValueError(f"fresh span [{start}, {stop}) does not fit a cache of {self.length} positions")
        for layer in self.layers:
            layer.start, layer.stop = start, stop

    def select(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` of every layer."""
        for layer in self.layers:
            layer.select(index)
