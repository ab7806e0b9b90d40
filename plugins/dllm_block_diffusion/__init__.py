"""Block-diffusion decoding rules, each a plugin found by its entry point in the group
``dllm_strategies``: DiffusionGemma's recommended strategy in pieces (``temperature_schedule``,
``multinomial``, ``entropy_bound``, ``renoise``, ``stable_stop``, ``self_conditioning``) and
Fast-dLLM v2's sub-block decoding (``sub_blocks``).

See docs/models.md (block diffusion) and docs/hooks.md (the two processes).
"""
