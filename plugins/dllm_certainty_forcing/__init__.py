"""dParallel (arXiv 2509.26488): certainty-forcing distillation as a plugin.

* :mod:`.trajectories`: the teacher decodes training prompts; the correct trajectories are kept.
* :mod:`.masking`: one active block per sample, two complementary masked views of it.
* :mod:`.loss`: cross-entropy on both views plus the certainty (entropy) term on positions
  already predicted right.
* :mod:`.training`: the resumable loop (full fine-tuning or LoRA), :mod:`.export`: the
  standard checkpoint out.
* :mod:`.diagnostic`: what the loss still has to teach a model, by block kind and mask ratio
  and at the states a decode visits.
* :mod:`.commands`, :mod:`.plugin`: the ``distill`` command (``trajectories``, ``train``,
  ``diagnose``) and the ``default-dparallel`` model.
"""
