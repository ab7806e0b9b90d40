"""Fast-dLLM's prefix cache (hook ``dllm_forward``).

At each block start one full forward gives the step's logits and fills the cache with the keys
and values of every position; inside the block only ``x[block_start:]`` (the block and
everything after it, still masked) is fed, reading the prompt's and earlier blocks' keys and
values from the cache.  Each row's cache is refreshed at that row's own block boundaries, after
its truncation and whenever a token it reads from the cache changes; rows in different blocks,
rows that finish, left padding and shrinking live lengths are handled as described in
:mod:`dllm_kv_cache.block_cache` and :mod:`dllm_kv_cache.snapshot` (and ``docs/caching.md``).
"""

from __future__ import annotations

from dllm_kv_cache.block_cache import BlockCache


class PrefixCache(BlockCache):
    """Approximate prefix KV cache of Fast-dLLM (Wu et al., "Fast-dLLM: Training-free Acceleration
    of Diffusion LLM by Enabling KV Cache and Parallel Decoding", arXiv 2505.22618): cache the keys
    and values before the block, refresh them at every block boundary (each row at its own),
    feed ``x[block_start:]``.

    Composes with any schedule, sampler, score or remasking rule (``threshold``,
    ``entropy_threshold``, ``learned_filter``...) and with ``eot``; it owns ``dllm_forward``,
    so it cannot be combined with another forward plugin (``dual_cache``, ``wino``).
    """

    name = "prefix_cache"
    keep_suffix = False
    conflicts = {"dual_cache": "both are KV caches owning dllm_forward; choose one (dual_cache also caches "
                               "the suffix)"}
