"""Fast-dLLM's dual cache (hook ``dllm_forward``).

At each block start one full forward gives the step's logits and fills the cache with the keys
and values of every position; inside the block only the block itself is fed, reading both the
prefix (prompt and earlier blocks) and the suffix (the still-masked positions after the block)
from the cache.  Each row's cache is refreshed at that row's own block boundaries, after its
truncation and whenever a token it reads from the cache changes; see
:mod:`dllm_kv_cache.block_cache`, :mod:`dllm_kv_cache.snapshot` and ``docs/caching.md`` for
batches whose rows are in different blocks, finish at different times, have different prompt
lengths or shrink under ``eot``.
"""

from __future__ import annotations

from dllm_kv_cache.block_cache import BlockCache


class DualCache(BlockCache):
    """Approximate dual KV cache of Fast-dLLM (Wu et al., arXiv 2505.22618): cache the keys and
    values before *and* after the block, refresh them at every block boundary (each row at its
    own), feed only the block.

    Composes with any schedule, sampler, score or remasking rule and with ``eot``; it owns
    ``dllm_forward``, so it cannot be combined with another forward plugin (``prefix_cache``,
    ``wino``).
    """

    name = "dual_cache"
    keep_suffix = True
    conflicts = {"prefix_cache": "both are KV caches owning dllm_forward; choose one (dual_cache also caches "
                                 "the suffix)"}
