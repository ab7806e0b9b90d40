"""The oracle's default reference: the model's own standard decode of the same prompt.

Learn2PD's oracle compares each step's candidates with the answer the model itself gives under
LLaDA's standard decoding: low-confidence remasking, one token per step, greedy, the same
generation and block length (arXiv 2509.25188; see PAPERS.md).  :func:`self_reference` runs
exactly that with the core's defaults; :class:`ReferenceCache` keeps one reference per
(model, prompt, lengths) so a prompt is decoded for reference only once.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

import attrs
import torch

from dllm_strategies.decode import run
from dllm_strategies.errors import ConfigError
from dllm_strategies.strategy import build_strategy
from dllm_strategies.state import DecodeConfig, DecodeState


def self_reference(model: Any, prompt: torch.Tensor, prompt_mask: torch.Tensor, config: DecodeConfig) -> torch.Tensor:
    """(B, G) responses of ``model`` under LLaDA's low-confidence decoding at one token per step.

    ``prompt``/``prompt_mask`` are the run's left-padded (B, P) prompt; ``config`` gives the
    generation and block length (its ``steps`` and ``trace`` are replaced).  Pass the *raw*
    model, not a run's metered wrapper, so this decode does not count as the run's cost.
    """
    one_per_step = attrs.evolve(config, steps=config.gen_length, max_steps=None, trace=False)
    start = DecodeState.start(prompt, prompt_mask, one_per_step)
    with torch.no_grad():
        return run(build_strategy(None), model, start).tokens


@attrs.define
class ReferenceCache:
    """Self-references per model (held weakly) and per unpadded prompt, least recently used
    first out.  A model object that cannot be referenced weakly is never cached.

    Attributes:
        capacity: most prompts kept per model.
    """

    capacity: int = 4096
    _tables: weakref.WeakKeyDictionary = attrs.field(factory=weakref.WeakKeyDictionary, init=False)

    def references(self, model: Any, prompt: torch.Tensor, prompt_mask: torch.Tensor,
                   config: DecodeConfig) -> torch.Tensor:
        """(B, G) self-references, computing only the rows not cached yet (in one batch)."""
        table = self._table(model)
        if table is None:
            return self_reference(model, prompt, prompt_mask, config)
        keys = _keys(prompt, prompt_mask, config.gen_length, config.block_length, config.mask_id)
        missing = sorted({i for i, key in enumerate(keys) if key not in table})
        if missing:
            index = torch.tensor(missing, device=prompt.device)
            fresh = self_reference(model, prompt.index_select(0, index), prompt_mask.index_select(0, index), config)
            for row, i in enumerate(missing):
                table[keys[i]] = fresh[row]
        rows = []
        for key in keys:
            table.move_to_end(key)
            rows.append(table[key])
        self._trim(table)
        return torch.stack(rows).to(prompt.device)

    def _table(self, model: Any) -> OrderedDict | None:
        """The model's table of references, None for a model that cannot be referenced weakly."""
        try:
            return self._tables.setdefault(model, OrderedDict())
        except TypeError:
            return None

    def _trim(self, table: OrderedDict) -> None:
        """Drop the least recently used references beyond ``capacity``."""
        while len(table) > self.capacity:
            table.popitem(last=False)

    def clear(self) -> None:
        """Forget every cached reference (e.g. after changing a model's weights in place)."""
        self._tables.clear()


def _keys(prompt: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int, block_length: int,
          mask_id: int) -> list[tuple]:
    """One cache key per row: the unpadded prompt and the lengths that shape the decode."""
    return [(tuple(ids[keep] for keep in range(len(ids)) if flags[keep]), gen_length, block_length, mask_id)
            for ids, flags in zip(prompt.tolist(), prompt_mask.tolist(), strict=True)]


REFERENCES = ReferenceCache()
"""The process-wide cache the ``egp_oracle`` plugin uses (``egp_oracle(cache=false)`` bypasses it)."""
