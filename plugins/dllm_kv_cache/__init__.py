"""Approximate KV caching (Fast-dLLM, arXiv 2505.22618) as ``dllm_forward`` plugins.

* ``prefix_cache`` (:class:`~dllm_kv_cache.prefix.PrefixCache`): cache the prompt and earlier
  blocks; feed the current block and everything after it.
* ``dual_cache`` (:class:`~dllm_kv_cache.dual.DualCache`): also cache the suffix after the
  block; feed only the block.

Each row has its own cache, refreshed by a full forward at that row's block boundaries (and
whenever what it was built for stops holding for that row), so a row decodes the same in any
batch.  Modules: :mod:`~dllm_kv_cache.support` (which models can be
cached), :mod:`~dllm_kv_cache.fresh_span` (the transformers cache object),
:mod:`~dllm_kv_cache.snapshot` (what a cache was built for, refresh rules),
:mod:`~dllm_kv_cache.block_cache` (the refresh and reuse forwards).  See ``docs/caching.md``.
"""
