"""Tensor helpers shared by the core and plugins.  All vectorised: no Python loop over
positions or rows."""

from __future__ import annotations

import torch


def top_k_mask(scores: torch.Tensor, k: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: per row the ``k[row]`` highest ``scores`` among ``eligible`` positions.

    Ties go to the lower index (a stable sort), so the choice never depends on the batch.
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
    """Softmax probability of ``tokens`` under ``logits`` (..., V), at least float32."""
    wide = _wide(logits)
    picked = wide.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return torch.exp(picked - torch.logsumexp(wide, dim=-1))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum p log p`` of the softmax of ``logits`` (..., V)."""
    logp = torch.log_softmax(_wide(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability (Dream's ``topk_margin``)."""
    top = torch.softmax(_wide(logits), dim=-1).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def argmax_except(logits: torch.Tensor, banned: int) -> torch.Tensor:
    """``argmax`` over the vocabulary, never choosing token ``banned`` (the mask)."""
    tokens = logits.argmax(-1)
    bad = tokens == banned
    if bad.any():
        second = logits[bad].topk(2, dim=-1).indices
        tokens[bad] = torch.where(second[:, 0] == banned, second[:, 1], second[:, 0])
    return tokens
