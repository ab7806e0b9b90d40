"""The run's random stream: one generator, seeded with ``config.seed``, for the draws that a
process or a plugin makes in a fixed order (the uniform process's noise, DiffusionGemma's
multinomial sampling).

Every draw is made for the whole batch, whichever rows are live, and the live rows take their
part: a row's draws then never depend on when the other rows finished, and a seeded run
consumes the stream exactly as ``model.generate()`` of DiffusionGemma consumes torch's global
one (a fresh CPU generator seeded with ``s`` yields what ``torch.manual_seed(s)`` does).
"""

from __future__ import annotations

import attrs
import torch


@attrs.define(eq=False)
class RandomStream:
    """``generator`` seeded once per run; ``batch_size`` rows are drawn at every draw."""

    generator: torch.Generator
    batch_size: int

    @classmethod
    def seeded(cls, seed: int, batch_size: int, device: torch.device) -> RandomStream:
        return cls(generator=torch.Generator(device=device).manual_seed(seed), batch_size=batch_size)

    def randint(self, high: int, width: int, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), width) ids uniform in ``[0, high)``: one ``torch.randint`` over the whole batch
        (``rows``: ``state.rows``, the step's rows in batch order)."""
        draw = torch.randint(0, high, (self.batch_size, width), generator=self.generator,
                             device=self.generator.device)
        if rows.numel() == self.batch_size:  # every row (rows are in batch order): the draw itself
            return draw
        return draw.index_select(0, rows.to(draw.device))

    def multinomial(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), W) one sample per position of ``probs`` (len(rows), W, V): one
        ``torch.multinomial`` over the whole batch (absent rows draw from a uniform distribution;
        the draw consumes the stream by shape only)."""
        R, W, V = probs.shape
        whole = probs if R == self.batch_size else probs.new_ones(self.batch_size, W, V).index_copy(
            0, rows.to(probs.device), probs)
        draw = torch.multinomial(whole.reshape(-1, V), num_samples=1, generator=self.generator)
        draw = draw.view(self.batch_size, W)
        return draw if R == self.batch_size else draw.index_select(0, rows.to(draw.device))
