"""What the learned filter sees: the top-1 softmax confidence at each position of the block.

Learn2PD's filter reads, at every step, the top-1 probability of each of the current block's
positions, committed or not (arXiv 2509.25188).  When End-of-Text truncation has cut into the
block, the authors' block is shorter than the filter's width and its inputs are zero-padded
(PAPERS.md); here a position cut by truncation, or one the step's logits do not cover, reads
the padding value, :data:`ZERO` by default (:data:`SETTLED`, 1.0, was this project's choice
before it followed the authors' code), so the features of a row never depend on the other rows
of its batch.
"""

from __future__ import annotations

import torch

from dllm_strategies.state import Logits

ZERO = 0.0
SETTLED = 1.0
PADDING = {"zero": ZERO, "settled": SETTLED}
"""Padding values by the name ``learned_filter(padding=...)`` gives them."""


def top1_confidence(values: torch.Tensor) -> torch.Tensor:
    """Largest softmax probability over the last axis of ``values`` (..., V), in float32 or wider."""
    wide = values if values.dtype in (torch.float32, torch.float64) else values.float()
    return torch.exp(wide.max(-1).values - torch.logsumexp(wide, dim=-1))


def block_columns(start: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) response columns ``start[b] + 0 .. width - 1``."""
    return start[:, None] + torch.arange(width, device=start.device)[None, :]


def block_confidences(logits: Logits, start: torch.Tensor, width: int, live_length: torch.Tensor,
                      gen_length: int, pad: float = ZERO) -> torch.Tensor:
    """(B, width) float32 features: top-1 confidence at response columns ``start .. start + width``.

    Args:
        logits: the step's logits (B, W, V) for columns ``[logits.start, logits.stop)``.
        start: (B,) first column of each row's block (``plan.window_start``).
        width: the block's width (the filter's input width).
        live_length: (B,) live lengths; columns at or past them are cut (feature ``pad``).
        gen_length: response length G.
        pad: the feature of a cut column or one the logits do not cover (the authors' 0).
    """
    top1 = logits.widen(top1_confidence(logits.values), pad, gen_length)
    cols = block_columns(start, width)
    picked = top1.gather(1, cols.clamp(max=gen_length - 1))
    return torch.where(cols < live_length[:, None], picked, pad).float()


def place_block(values: torch.Tensor, start: torch.Tensor, gen_length: int, fill: float | bool) -> torch.Tensor:
    """Spread per-block values (B, width) back onto response columns: a (B, G) tensor holding
    ``values[b, j]`` at column ``start[b] + j`` and ``fill`` elsewhere."""
    width = values.shape[1]
    offset = torch.arange(gen_length, device=values.device)[None, :] - start[:, None]
    inside = (offset >= 0) & (offset < width)
    picked = values.gather(1, offset.clamp(0, width - 1))
    return torch.where(inside, picked, torch.as_tensor(fill, dtype=values.dtype, device=values.device))
