"""dParallel's certainty-forcing loss over the two complementary views of the active block.

For one sample and one view with masked active positions ``M`` and targets ``y`` (the
teacher's own tokens)::

    CE(view) = mean over i in M of  -log softmax(logits_i)[y_i]
    H(view)  = mean over i in M with argmax(logits_i) == y_i of  entropy(softmax(logits_i / T))

and the sample's loss is ``CE(first) + CE(second) + w * (H(first) + H(second))``, with
temperature ``T = 0.5`` and weight ``w = 2`` for LLaDA-style models (1 for Dream).  The
entropy term only touches positions the model already predicts correctly: it sharpens what
is right and leaves what is wrong to the cross-entropy.  A mean over no positions is 0.

Each sample's terms are averaged over its own positions, then samples are averaged: the
authors train with one sample per device micro-batch, so every sample weighs the same
whatever the size of its active block.
(Chen et al., "dParallel", arXiv 2509.26488.)
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from dllm_strategies import ops
from dllm_strategies.errors import ConfigError

TEMPERATURE = 0.5
LLADA_WEIGHT = 2.0
DREAM_WEIGHT = 1.0


@attrs.frozen
class LossTerms:
    """One batch's certainty-forcing loss and its parts.

    Attributes:
        per_sample: (B,) each sample's ``CE + CE' + w (H + H')``; the batch loss is its mean.
        cross_entropy: (2, B) CE of the first and second view per sample.
        entropy: (2, B) certainty entropy of the first and second view per sample.
        masked: (2, B) masked active positions per view and sample.
        correct: (2, B) of those, positions whose argmax already equals the target.
    """

    per_sample: torch.Tensor = attrs.field(eq=False)
    cross_entropy: torch.Tensor = attrs.field(eq=False)
    entropy: torch.Tensor = attrs.field(eq=False)
    masked: torch.Tensor = attrs.field(eq=False)
    correct: torch.Tensor = attrs.field(eq=False)

    @property
    def total(self) -> torch.Tensor:
        return self.per_sample.mean()

    def summary(self) -> dict[str, float]:
        """Batch means for logging: loss, CE, certainty entropy, share of masked positions right."""
        return {
            "loss": float(self.per_sample.mean()),
            "ce": float(self.cross_entropy.sum(0).mean()),
            "entropy": float(self.entropy.sum(0).mean()),
            "correct": float(self.correct.sum() / self.masked.sum().clamp(min=1)),
        }


def _per_sample_mean(values: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor, batch: int) -> torch.Tensor:
    sums = torch.zeros(batch, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    return sums / counts.clamp(min=1).to(values.dtype)


def view_terms(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor,
               temperature: float = TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One view's terms per sample: (CE, certainty entropy, masked count, correct count), each (B,).

    ``logits`` (B, L, V) score each position's own token; ``targets`` (B, L); ``masked`` (B, L)
    marks the view's masked active positions.  Only those positions are read (the rest of
    the vocabulary-wide logits never enter the loss, computed in at least float32).
    """
    if temperature <= 0:
        raise ConfigError(f"certainty temperature must be > 0, got {temperature} (dParallel uses 0.5)")
    batch = logits.shape[0]
    rows, cols = masked.nonzero(as_tuple=True)
    picked = logits[rows, cols]
    if picked.dtype not in (torch.float32, torch.float64):
        picked = picked.float()  # bf16 / fp16 logits: the loss in float32
    wanted = targets[rows, cols]
    ce = F.cross_entropy(picked, wanted, reduction="none")
    right = picked.argmax(-1) == wanted
    sharp = ops.entropy(picked / temperature) * right
    masked_count = masked.sum(1)
    correct_count = torch.zeros(batch, dtype=torch.long, device=logits.device).index_add(0, rows, right.long())
    return (_per_sample_mean(ce, rows, masked_count, batch), _per_sample_mean(sharp, rows, correct_count, batch),
            masked_count, correct_count)


def certainty_forcing_loss(logits_first: torch.Tensor, logits_second: torch.Tensor, targets: torch.Tensor,
                           first: torch.Tensor, second: torch.Tensor, *, entropy_weight: float = LLADA_WEIGHT,
                           temperature: float = TEMPERATURE) -> LossTerms:
    """The loss of one batch from both views' logits (B, L, V) over the response region.

    Args:
        targets: (B, L) the teacher's response (padded with end-of-text).
        first / second: (B, L) bool, the masked active positions of each view.
        entropy_weight: ``w`` (2 for LLaDA-style models, 1 for Dream).
        temperature: ``T`` of the certainty entropy (0.5).
    """
    if entropy_weight < 0:
        raise ConfigError(f"entropy_weight must be >= 0, got {entropy_weight} (dParallel: 2 for LLaDA, 1 for Dream)")
    ce1, h1, m1, c1 = view_terms(logits_first, targets, first, temperature)
    ce2, h2, m2, c2 = view_terms(logits_second, targets, second, temperature)
    per_sample = ce1 + ce2 + entropy_weight * (h1 + h2)
    return LossTerms(per_sample=per_sample, cross_entropy=torch.stack([ce1, ce2]), entropy=torch.stack([h1, h2]),
                     masked=torch.stack([m1, m2]), correct=torch.stack([c1, c2]))
