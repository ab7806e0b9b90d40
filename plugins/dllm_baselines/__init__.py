"""First-party baseline strategies (LLaDA, Fast-dLLM, Dream), each a plugin found by its
entry point in the group ``dllm_strategies``."""
