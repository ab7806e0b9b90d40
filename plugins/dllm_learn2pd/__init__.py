"""Learn2PD (Bao et al., "Learning to Parallel", arXiv 2509.25188) as plugins.

- ``egp_oracle`` (:mod:`.oracle`): the Extremely Greedy Parallel oracle, which commits every
  masked position whose candidate already equals a reference answer.
- ``learned_filter`` (:mod:`.learned_filter`): a 2-layer MLP trained to imitate the oracle from
  the block's top-1 confidences (:mod:`.features`, :mod:`.filter_model`).
- ``eot`` (:mod:`.eot`): End-of-Text truncation, which stops computing on everything after an
  end-of-text token.
- :class:`FilterCommit` (:mod:`.accepted`): how a remasking plugin reports the positions its own
  rule accepted, which ``eot``'s committed branch reads.
- ``dllm-strategies train-filter`` (:mod:`.commands`, :mod:`.training`): collect the oracle's
  labels on the synthetic task and train a filter.

See docs/learn2pd.md.
"""

from dllm_learn2pd.accepted import FilterCommit

__all__ = ["FilterCommit"]
