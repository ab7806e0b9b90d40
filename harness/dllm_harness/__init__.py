"""The harness: evaluate and benchmark any combination of strategy plugins.

* :mod:`dllm_harness.lm_eval_model`: the lm-evaluation-harness model ``dllm``;
* :mod:`dllm_harness.eval`: ``dllm-strategies eval`` (lm-eval's command line with that model);
* :mod:`dllm_harness.local_tasks`: the project's own lm-eval tasks (``dllm_arith``, ``dllm_arith_mc``,
  ``dllm_arith_long``);
* :mod:`dllm_harness.likelihood`: LLaDA's Monte Carlo log-likelihood estimate;
* :mod:`dllm_harness.metrics`: NFE, TPF, tokens/s, speedup and AUP, defined once;
* :mod:`dllm_harness.matrix`, :mod:`dllm_harness.bench`, :mod:`dllm_harness.report`,
  :mod:`dllm_harness.plots`: ``dllm-strategies bench``.

The harness uses strategies by name through the core's registry, never by importing a plugin.
"""
