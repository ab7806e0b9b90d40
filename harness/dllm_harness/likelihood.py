"""LLaDA's Monte Carlo estimate of a continuation's log-likelihood under a masked diffusion model.

For a context ``c`` and a target ``x`` of ``L`` tokens, one draw:

1. draws how many target tokens to mask, ``l`` uniform in ``1..L``;
2. masks ``l`` target positions chosen uniformly at random (the context stays clean);
3. scores ``sum over masked positions j of CE(x_j) / (l / L)``.

The estimate of ``-log p(x | c)`` is the mean over ``mc_num`` draws; the log-likelihood reported is
its negative.  Every draw is one row of a batched forward (rows of several requests and draws share
a forward, left-padded so that every target ends at the right edge).

Randomness is counter-based: the uniform numbers of draw ``d`` come from an integer hash of
``(seed, d, L, position)``, computed with tensor operations.  So an estimate does not depend on the
batch it ran in or on the order of requests, the same seed always gives the same number, and the
requests of a multiple-choice question with equally long choices use the same masks (common random
numbers: the difference between choices is not drowned by the noise of the masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dllm_strategies.errors import ConfigError

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # odd multiplier < 2**31: products of 32-bit values stay inside int64


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift / multiply rounds) on int64 tensors holding 32-bit values."""
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    return (x >> 16) ^ x


def hashed_uniform(seed: int, *keys: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in [0, 1), a deterministic function of ``seed`` and the integer ``keys``
    (broadcast together): the same keys give the same numbers on any batch layout."""
    x = torch.tensor(seed & _MASK32, dtype=torch.long)
    x = _mix(x)
    for key in keys:
        x = _mix(x ^ (key.long() & _MASK32))
    return x.double() / 2.0 ** 32


def draw_masks(lengths: torch.Tensor, draws: torch.Tensor, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which target positions each row masks.

    Args:
        lengths: (R,) target length ``L`` of each row (>= 1).
        draws: (R,) draw index of each row.
        width: columns of the returned mask (>= max L); column j is target position j.
        seed: the estimator's seed.

    Returns:
        ``(masked, count)``: (R, width) bool with exactly ``count[r]`` True among the first
        ``lengths[r]`` columns, and (R,) ``count`` = ``l`` uniform in ``1..L``.
    """
    L = lengths.long()
    count = (hashed_uniform(seed, draws, L, torch.full_like(L, -1)) * L).long().clamp(max=L - 1) + 1
    columns = torch.arange(width, device=L.device)
    order_key = hashed_uniform(seed, draws[:, None], L[:, None], columns[None, :])
    inside = columns[None, :] < L[:, None]
    order_key = order_key.masked_fill(~inside, 2.0)  # never chosen
    rank = order_key.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
    return (rank < count[:, None]) & inside, count


def _padded(contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int):
    """Left-padded (N, W) ids and attention mask of context + target, and (N,) target lengths."""
    rows = [list(c) + list(t) for c, t in zip(contexts, targets, strict=True)]
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
    attention = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, attention, torch.tensor([len(t) for t in targets], dtype=torch.long)


def check_requests(model: Any, contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> None:
    """Fail clearly on requests the estimator cannot score."""
    limit = getattr(model, "max_positions", None)
    for i, (context, target) in enumerate(zip(contexts, targets, strict=True)):
        if not target:
            raise ConfigError(f"likelihood request {i} has an empty continuation; give at least one token to score")
        if model.mask_id in context or model.mask_id in target:
            raise ConfigError(f"likelihood request {i} contains the mask token (id {model.mask_id}); "
                              "contexts and continuations must be clean text")
        if limit is not None and len(context) + len(target) > limit:
            raise ConfigError(f"likelihood request {i} is {len(context) + len(target)} tokens, more than the model's "
                              f"{limit} positions; shorten the context or the continuation")


@torch.inference_mode()
def masked_loglikelihood(model: Any, contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                         mc_num: int = 128, seed: int = 0, rows_per_forward: int = 64,
                         progress: Any = None) -> tuple[torch.Tensor, int]:
    """Monte Carlo log-likelihood of each target given its context (LLaDA's estimator).

    Args:
        model: a diffusion model (``logits``, ``mask_id``, ``fill_id``, ``device``).
        contexts / targets: token ids per request (a context may be empty when its target is not).
        mc_num: draws per request.
        seed: seed of the draws (see :func:`draw_masks`).
        rows_per_forward: (request, draw) rows per batched forward.
        progress: optional callable ``progress(rows_done)`` (e.g. a tqdm's ``update``).

    Returns:
        ``(loglik, forwards)``: (N,) float64 log-likelihoods and the number of model calls.
    """
    if mc_num < 1 or rows_per_forward < 1:
        raise ConfigError(f"mc_num ({mc_num}) and rows_per_forward ({rows_per_forward}) must be >= 1")
    check_requests(model, contexts, targets)
    device = model.device
    ids, attention, lengths = _padded(contexts, targets, model.fill_id)
    ids, attention, lengths = ids.to(device), attention.to(device), lengths.to(device)
    N, W = ids.shape
    used = attention.sum(1)  # (N,) real tokens of each request: it occupies the last `used` columns
    total = torch.zeros(N, dtype=torch.float64, device=device)
    request = torch.arange(N, device=device).repeat_interleave(mc_num)
    draw = torch.arange(mc_num, device=device).repeat(N)
    forwards = 0
    for start in range(0, N * mc_num, rows_per_forward):
        r, d = request[start:start + rows_per_forward], draw[start:start + rows_per_forward]
        L = lengths[r]
        keep = int(L.max())
        width = int(used[r].max())  # columns this chunk needs: the rest is padding for all its rows
        row_ids, row_attention = ids[r][:, W - width:], attention[r][:, W - width:]
        masked_tail, count = draw_masks(L, d, keep, seed)
        # Target position j of a row with length L sits at column width - L + j: targets end at the right edge,
        # so among the last `keep` columns, column c holds target position c - (keep - L).
        tail_position = torch.arange(keep, device=device)[None, :] - (keep - L[:, None])
        scored = masked_tail.gather(1, tail_position.clamp(min=0)) & (tail_position >= 0)
        masked = torch.zeros_like(row_attention)
        masked[:, width - keep:] = scored
        inputs = row_ids.masked_fill(masked, model.mask_id)
        if bool(row_attention.all()):
            att, positions = None, None
        else:
            att = row_attention.long()
            positions = (att.cumsum(-1) - 1).clamp(min=0)
        logits = model.logits(inputs, attention_mask=att, position_ids=positions, logits_to_keep=keep)
        forwards += 1
        logp = torch.log_softmax(logits[:, -keep:].double(), dim=-1)
        logp = logp.gather(-1, row_ids[:, width - keep:, None]).squeeze(-1)
        loss = torch.where(scored, -logp, 0.0).sum(1) * L.double() / count.double()
        total.index_add_(0, r, loss)
        if progress is not None:
            progress(int(r.shape[0]))
    return -total / mc_num, forwards
