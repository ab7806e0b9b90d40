"""How a remasking plugin tells ``eot`` which positions its own rule accepted.

Learn2PD's End-of-Text rule cuts after a committed end-of-text token only when the *filter*
accepted it (arXiv 2509.25188; PAPERS.md): the filter's step commits the union of what its
network accepts and the baseline's top-k, and a top-k commit is not the filter's decision.  The
core's ``Commit`` says what a step commits, not why, so a remasking plugin with an accept rule of
its own returns a :class:`FilterCommit`, a ``Commit`` that also carries ``accepted``: the positions
its rule chose, before any fallback it adds for progress.  ``eot`` wraps ``dllm_remask`` and reads
``accepted`` from whatever the hook returned.  Any ``Commit`` subclass with a (B, G) bool
``accepted`` attribute is read the same way, so a third-party filter need not import this package.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from dllm_strategies.state import Commit


@attrs.frozen
class FilterCommit(Commit):
    """A :class:`~dllm_strategies.state.Commit` that says which of its positions the plugin's own
    accept rule chose.

    Attributes:
        accepted: (B, G) bool, the positions the plugin's rule accepted (those of ``mask`` that
            are not fallback), or None for "not reported".
    """

    accepted: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False)


def reported_accepted(result: Any, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The ``accepted`` positions a ``dllm_remask`` result reports, None when it reports none
    (a bool mask, or a ``Commit`` without the attribute)."""
    accepted = getattr(result, "accepted", None)
    if accepted is None:
        return None
    if not isinstance(accepted, torch.Tensor) or tuple(accepted.shape) != tuple(shape) or \
            accepted.dtype != torch.bool:
        found = f"{tuple(accepted.shape)} {accepted.dtype}" if isinstance(accepted, torch.Tensor) \
            else type(accepted).__name__
        raise ValueError(f"the remasking plugin's Commit.accepted is {found}; report the positions its rule "
                         f"accepted as a {tuple(shape)} bool tensor (batch, gen_length), or None")
    return accepted
