"""The second wave of parallel-decoding rules, each a plugin found by its entry point in the
group ``dllm_strategies``: EB-Sampler, WINO, Prophet, CreditDecoding, LocalLeap and KLASS.

See ``docs/second-wave.md`` for the rule, options, state and hooks of each.
"""
