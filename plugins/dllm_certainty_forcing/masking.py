"""dParallel's semi-autoregressive masking: one active block, two complementary views.

For each sample of a batch whose response region is ``L`` positions wide (the teacher's
response padded with end-of-text to the training length), split into blocks of
``block_length`` from the start of the response:

* draw the active block ``n`` uniformly among the blocks of the region;
* blocks before ``n`` stay clean (the context a semi-autoregressive decoder has committed);
* inside block ``n`` each position is masked with probability ``mask_ratio`` (0.5) in the
  first view, and the second view masks exactly the other positions of the block, so the
  two views partition it and every active position is a target once;
* everything after block ``n`` is masked in both views and carries no loss (the still
  undecoded future).

The last block takes whatever remains of the region when ``L`` is not a multiple of the
block length.  The authors draw ``n`` in ``0..L // block_length``; when ``L`` is a multiple
of the block length that range holds one index past the end, whose active block is empty
(a sample with no loss).  Here ``n`` is drawn among the ``ceil(L / block_length)`` blocks
that exist, which is the same draw whenever the last block is partial.
(Chen et al., "dParallel", arXiv 2509.26488.)
"""

from __future__ import annotations

import attrs
import torch

from dllm_strategies.errors import ConfigError


@attrs.frozen
class Views:
    """The masks of one batch's two views over the response region (all ``(B, L)`` bool).

    Attributes:
        block: (B,) index of each sample's active block.
        active: positions of the active block.
        first: active positions masked in the first view.
        second: active positions masked in the second view (``active & ~first``).
        future: positions after the active block, masked in both views, never a target.
    """

    block: torch.Tensor = attrs.field(eq=False)
    active: torch.Tensor = attrs.field(eq=False)
    first: torch.Tensor = attrs.field(eq=False)
    second: torch.Tensor = attrs.field(eq=False)
    future: torch.Tensor = attrs.field(eq=False)

    def take(self, rows: slice) -> Views:
        """The views of a slice of the batch's samples (a micro-batch)."""
        return Views(block=self.block[rows], active=self.active[rows], first=self.first[rows],
                     second=self.second[rows], future=self.future[rows])

    def noisy(self, response: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views' inputs for ``response`` (B, L): masked where the view masks."""
        masked = torch.full_like(response, mask_id)
        one = torch.where(self.first | self.future, masked, response)
        two = torch.where(self.second | self.future, masked, response)
        return one, two


def block_count(length: int, block_length: int) -> int:
    """Number of blocks of ``block_length`` covering ``length`` positions (the last may be partial)."""
    return -(-length // block_length)


def draw_views(batch_size: int, length: int, *, block_length: int, mask_ratio: float,
               generator: torch.Generator, device: torch.device | str = "cpu") -> Views:
    """Draw the active block and the two complementary views for ``batch_size`` samples.

    Every draw comes from ``generator`` (on the CPU), so the views depend only on its seed,
    never on the device the model runs on.

    Raises:
        ConfigError: a non-positive length or block length, or a mask ratio outside (0, 1).
    """
    if length < 1 or block_length < 1:
        raise ConfigError(f"certainty-forcing views need a positive response length and block length, got "
                          f"length={length}, block_length={block_length}")
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio={mask_ratio} must lie strictly between 0 and 1 (dParallel uses 0.5)")
    blocks = block_count(length, block_length)
    block = torch.randint(blocks, (batch_size,), generator=generator)
    coin = torch.rand(batch_size, length, generator=generator) < mask_ratio
    position = torch.arange(length)[None, :]
    start = (block * block_length)[:, None]
    active = (position >= start) & (position < start + block_length)
    future = position >= start + block_length
    first = active & coin
    to = torch.device(device)
    return Views(block=block.to(to), active=active.to(to), first=first.to(to), second=(active & ~coin).to(to),
                 future=future.to(to))
