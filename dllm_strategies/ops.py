"""Tensor helpers shared by the core and plugins.  All vectorised: no Python loop over
positions or rows."""

from __future__ import annotations

import torch


def top_k_mask(scores: torch.Tensor, k: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: per row the ``k[row]`` highest ``scores`` among ``eligible`` positions.

    Ties go to the lower index (a stable sort), so the choice never depends on the batch or
    the device.  The authors' loops pick with ``torch.topk``, whose order among exactly equal
    values is unspecified (on CPU it is often not the lowest index, and CUDA differs): on an
    exact tie the two can commit different positions in one step.
    """
    ranked = scores.masked_fill(~eligible, float("-inf"))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    keep = torch.arange(scores.shape[1], device=scores.device)[None, :] < k[:, None]
    chosen = torch.zeros_like(eligible).scatter_(1, order, keep)
    return chosen & eligible


def best_mask(scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: the single best eligible position per row (none where nothing is eligible)."""
    return top_k_mask(scores, torch.ones(scores.shape[0], dtype=torch.long, device=scores.device), eligible)


def _wide(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def confidence(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``tokens`` under ``logits`` (..., V), in the logits' dtype.

    Computed as the reference implementations compute it: ``softmax`` over the vocabulary,
    then a gather (LLaDA's ``generate``; Dream's ``probs.max``).  Not ``exp(logit -
    logsumexp)``: there ``logit - logsumexp`` is rounded at the scale of the logits, so in
    float32 every candidate within that rounding of certain comes out as exactly 1.0, where
    softmax keeps them apart up to 0.99999988; the ranking (and every tie-break) would then
    differ from the authors'.  bfloat16 logits give bfloat16 confidences, as theirs do.
    """
    return probability_of(softmax(logits), tokens)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """``softmax`` over the vocabulary in the logits' dtype (what :func:`confidence` reads;
    ``Logits.probabilities`` computes it once a step for every hook that needs it)."""
    return torch.softmax(logits, dim=-1)


def probability_of(probabilities: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The probability of each of ``tokens`` under ``probabilities`` (..., V)."""
    return probabilities.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum p log p`` of the softmax of ``logits`` (..., V), at least float32
    (stable for training: no ``log 0``)."""
    logp = torch.log_softmax(_wide(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def reference_entropy(logits: torch.Tensor, *, eps: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Entropy as the reference decoders compute it: ``-sum p * log(p + eps)`` with
    ``p = softmax(logits)`` in ``dtype`` (the logits' own by default).  dParallel's entropy
    threshold uses float64 and ``eps=1e-12``; Dream's ``entropy`` score the logits' dtype and
    ``eps=1e-10``.  Bit-for-bit theirs, so a threshold or a ranking decides as theirs does."""
    p = torch.softmax(logits if dtype is None else logits.to(dtype), dim=-1)
    return -(p * torch.log(p + eps)).sum(-1)


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability in the logits' dtype (Dream's ``topk_margin``:
    the softmax, then its two largest values)."""
    top = torch.softmax(logits, dim=-1).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def argmax_except(logits: torch.Tensor, banned: int) -> torch.Tensor:
    """``argmax`` over the vocabulary, never choosing token ``banned`` (the mask)."""
    tokens = logits.argmax(-1)
    bad = tokens == banned
    if bad.any():
        second = logits[bad].topk(2, dim=-1).indices
        tokens[bad] = torch.where(second[:, 0] == banned, second[:, 1], second[:, 0])
    return tokens


def first_index_of(tokens: torch.Tensor, ids) -> torch.Tensor:
    """(B,) column of the first token of each row of ``tokens`` (B, N) that is one of ``ids``
    (N when there is none): where an answer ends at its first end-of-text token."""
    hit = torch.isin(tokens, torch.tensor(sorted(set(ids)), dtype=tokens.dtype, device=tokens.device))
    first = hit.long().argmax(1)
    return torch.where(hit.any(1), first, torch.full_like(first, tokens.shape[1]))


def answer_blocks(answer_lengths: torch.Tensor, num_blocks: int, block_length: int) -> torch.Tensor:
    """(B, num_blocks) bool: the blocks that hold at least one of a row's first
    ``answer_lengths`` columns (the rest are its end-of-text tail)."""
    starts = torch.arange(num_blocks, device=answer_lengths.device)[None, :] * block_length
    return starts < answer_lengths[:, None]

