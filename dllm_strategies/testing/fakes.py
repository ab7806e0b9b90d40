"""A fake diffusion model whose logits come from a function, and that records every call;
and a recorder that adds the same record to any model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch


@attrs.define
class Call:
    """One recorded call: the input the model saw."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    logits_to_keep: int


LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def ScriptedLogits(vocab_size: int, seed: int = 0) -> LogitsFn:
    """Deterministic logits that depend on each position's token and its neighbours
    (so committing tokens changes later predictions), never favouring token 0."""
    table = torch.randn(vocab_size, vocab_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def logits(input_ids: torch.Tensor) -> torch.Tensor:
        left = torch.roll(input_ids, 1, dims=1)
        right = torch.roll(input_ids, -1, dims=1)
        return table[input_ids] + 0.5 * table[left] + 0.25 * table[right]

    return logits


@attrs.define(eq=False)
class FakeModel:
    """Satisfies the model protocol of :func:`dllm_strategies.decode`.

    ``logits_fn(input_ids) -> (B, T, V)`` gives the logits; ``calls`` records every call.
    """

    logits_fn: LogitsFn
    vocab_size: int
    mask_id: int = 0
    eot_ids: tuple[int, ...] = (1,)
    fill_id: int = 1
    max_positions: int | None = None
    tokenizer: Any = None
    name: str = "fake"
    calls: list[Call] = attrs.field(factory=list)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, logits_to_keep: int = 0, **kwargs: Any) -> torch.Tensor:
        self.calls.append(Call(input_ids.clone(), None if attention_mask is None else attention_mask.clone(),
                               logits_to_keep))
        out = self.logits_fn(input_ids)
        return out[:, -logits_to_keep:] if logits_to_keep else out


@attrs.define(eq=False)
class RecordingModel:
    """Any model (real or fake), with every ``logits`` call recorded in ``calls``; every other
    attribute is the wrapped model's (so plugins that need ``model.module`` still find it)."""

    model: Any
    calls: list[Call] = attrs.field(factory=list)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, logits_to_keep: int = 0, **kwargs: Any) -> torch.Tensor:
        self.calls.append(Call(input_ids.clone(), None if attention_mask is None else attention_mask.clone(),
                               logits_to_keep))
        return self.model.logits(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 logits_to_keep=logits_to_keep, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)
