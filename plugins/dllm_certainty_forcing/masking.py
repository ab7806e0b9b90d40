"""dParallel's semi-autoregressive masking: one active block, two complementary views.

For each sample of a batch whose response region is ``L`` positions wide (the teacher's
response padded with end-of-text to the training length), split into blocks of
``block_length`` from the start of the response:

* draw the active block ``n`` uniformly among the blocks of the region (of each sample's own
  response when their lengths differ, as in the authors' prompt + response layout);
* blocks before ``n`` stay clean (the context a semi-autoregressive decoder has committed);
* inside block ``n`` each position is masked with probability ``r`` in the first view, and
  the second view masks exactly the other positions of the block, so the two views
  partition it and every active position is a target once.  ``r`` is 0.5 in the authors'
  code; :class:`MaskRatio` also draws it per sample, uniform or skewed towards 1 (named
  deviations, off by default);
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

    def shift(self, offsets: torch.Tensor, width: int) -> Views:
        """The views placed in ``width`` columns where sample ``i``'s response starts at column
        ``offsets[i]`` (the columns before it, and any past the drawn length, are never masked)."""
        length = self.active.shape[1]
        source = torch.arange(width, device=self.active.device)[None, :] - offsets.to(self.active.device)[:, None]
        inside = (source >= 0) & (source < length)
        index = source.clamp(0, length - 1)

        def place(mask: torch.Tensor) -> torch.Tensor:
            return mask.gather(1, index) & inside

        return Views(block=self.block, active=place(self.active), first=place(self.first),
                     second=place(self.second), future=place(self.future))

    def to(self, device: torch.device | str) -> Views:
        return Views(block=self.block.to(device), active=self.active.to(device), first=self.first.to(device),
                     second=self.second.to(device), future=self.future.to(device))

    def noisy(self, response: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views' inputs for ``response`` (B, L): masked where the view masks."""
        masked = torch.full_like(response, mask_id)
        one = torch.where(self.first | self.future, masked, response)
        two = torch.where(self.second | self.future, masked, response)
        return one, two


RATIO_DISTRIBUTIONS = ("fixed", "uniform", "high")


@attrs.frozen
class MaskRatio:
    """How the first view's mask ratio of the active block is chosen, per sample.

    * ``fixed``: always ``ratio`` (the authors' code: 0.5; the method as published);
    * ``uniform``: ``r ~ U(0, 1)`` (a deviation: the draw the authors left commented out);
    * ``high``: ``r = u ** (1 / skew)``, ``u ~ U(0, 1)``, a Beta(skew, 1) draw leaning towards
      fully masked blocks (a deviation: the states a threshold decoder meets first, where a
      teacher that is already certain at 0.5 is still uncertain); mean ``skew / (skew + 1)``.

    The second view always masks the complement, so it sees ratio ``1 - r``.
    """

    distribution: str = "fixed"
    ratio: float = 0.5
    skew: float = 3.0

    def __attrs_post_init__(self) -> None:
        if self.distribution not in RATIO_DISTRIBUTIONS:
            raise ConfigError(f"mask-ratio distribution {self.distribution!r} is unknown; use one of "
                              f"{', '.join(RATIO_DISTRIBUTIONS)}")
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"mask_ratio={self.ratio} must lie strictly between 0 and 1 (dParallel uses 0.5)")
        if not self.skew > 0:
            raise ConfigError(f"mask-ratio skew={self.skew} must be > 0 (3: mean ratio 0.75)")

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B,) the first view's ratio of each sample (no draw at all for ``fixed``)."""
        if self.distribution == "fixed":
            return torch.full((batch_size,), self.ratio)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        r = u if self.distribution == "uniform" else u ** (1.0 / self.skew)
        return r.float()


def block_count(length: int, block_length: int) -> int:
    """Number of blocks of ``block_length`` covering ``length`` positions (the last may be partial)."""
    return -(-length // block_length)


def draw_views(batch_size: int, length: int, *, block_length: int, mask_ratio: float | MaskRatio = 0.5,
               generator: torch.Generator, device: torch.device | str = "cpu",
               lengths: torch.Tensor | None = None) -> Views:
    """Draw the active block and the two complementary views for ``batch_size`` samples.

    Positions are counted from the start of each sample's response; ``length`` columns wide.
    ``lengths`` (B,): each sample's own response length (at most ``length``) when they differ,
    as when prompt and response are cut or padded together to one total length; the active
    block is then drawn among that sample's own blocks and positions past its end are never
    active nor future.  Every draw comes from ``generator`` (on the CPU), so the views depend
    only on its seed, never on the device the model runs on.  With one length and a fixed
    ratio the draws are those of earlier versions (a resumed run reproduces them).

    Raises:
        ConfigError: a non-positive length or block length, a response length outside
            ``1..length``, or a mask ratio outside (0, 1).
    """
    if length < 1 or block_length < 1:
        raise ConfigError(f"certainty-forcing views need a positive response length and block length, got "
                          f"length={length}, block_length={block_length}")
    ratio = mask_ratio if isinstance(mask_ratio, MaskRatio) else MaskRatio("fixed", mask_ratio)
    position = torch.arange(length)[None, :]
    if lengths is None:
        block = torch.randint(block_count(length, block_length), (batch_size,), generator=generator)
        exists = torch.ones(1, length, dtype=torch.bool)
    else:
        lengths = lengths.cpu().long()
        if lengths.shape != (batch_size,) or bool((lengths < 1).any()) or bool((lengths > length).any()):
            raise ConfigError(f"certainty-forcing views: per-sample response lengths must be ({batch_size},) "
                              f"values in 1..{length}")
        counts = -(-lengths // block_length)
        block = (torch.rand(batch_size, generator=generator, dtype=torch.float64) * counts).long()
        block = torch.minimum(block, counts - 1)
        exists = position < lengths[:, None]
    ratios = ratio.draw(batch_size, generator)
    coin = torch.rand(batch_size, length, generator=generator) < ratios[:, None]
    start = (block * block_length)[:, None]
    active = (position >= start) & (position < start + block_length) & exists
    future = (position >= start + block_length) & exists
    first = active & coin
    to = torch.device(device)
    return Views(block=block.to(to), active=active.to(to), first=first.to(to), second=(active & ~coin).to(to),
                 future=future.to(to))
