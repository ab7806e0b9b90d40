"""The one interface strategies see of a model: :class:`DiffusionModel`.

``logits(input_ids, attention_mask, position_ids, logits_to_keep)`` returns logits aligned
so that position i scores token i (a shifted family such as Dream is re-aligned here), plus
the ids strategies need (mask, end-of-text/end-of-turn, fill) and the tokenizer.

Any object with the same attributes and ``logits`` method works as a model (a protocol):
tests use fakes whose logits hypothesis draws.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from dllm_strategies.models.families import Family


@runtime_checkable
class DiffusionModelLike(Protocol):
    """What the decoder needs of a model."""

    mask_id: int
    eot_ids: tuple[int, ...]
    fill_id: int
    vocab_size: int
    max_positions: int | None
    tokenizer: Any

    @property
    def device(self) -> torch.device: ...

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
               **kwargs: Any) -> torch.Tensor: ...


@attrs.define(eq=False)
class DiffusionModel:
    """A transformers module with the facts strategies need.

    Attributes:
        module: the ``torch.nn.Module`` (e.g. ``LlamaForCausalLM`` with ``is_causal=False``).
        tokenizer: its tokenizer (with chat template when the checkpoint has one).
        family: the :class:`Family` it was recognised as.
        mask_id / eot_ids / fill_id: special ids (end-of-text first in ``eot_ids``).
        vocab_size: width of the logits.
        max_positions: longest sequence the model takes, or None when unbounded.
        name: where it came from (path, hub id or registered name).
    """

    module: torch.nn.Module
    tokenizer: Any
    family: Family
    mask_id: int
    eot_ids: tuple[int, ...]
    fill_id: int
    vocab_size: int
    max_positions: int | None = None
    name: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
               **kwargs: Any) -> torch.Tensor:
        """Logits (B, K, V) for the last ``logits_to_keep`` positions (all when 0), aligned so
        that each position scores its own token.  ``kwargs`` go to the module (e.g. a KV cache)."""
        shifted = self.family.shifted
        keep = logits_to_keep + 1 if (shifted and logits_to_keep) else logits_to_keep
        if keep and keep >= input_ids.shape[1]:
            keep = 0
        if "ForMaskedLM" in type(self.module).__name__:
            out = self.module(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, **kwargs).logits
            if keep:
                out = out[:, -keep:]
        else:
            kwargs.setdefault("use_cache", False)  # no KV cache unless a forward plugin asks for one
            out = self.module(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, logits_to_keep=keep, **kwargs).logits
        if shifted:
            # Dream: position i scores token i+1; position i's own score is at i-1.
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
            if logits_to_keep and out.shape[1] > logits_to_keep:
                out = out[:, -logits_to_keep:]
        return out
