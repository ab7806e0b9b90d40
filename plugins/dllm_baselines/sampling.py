"""Candidate sampling (hook ``dllm_sample``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.plugin import Plugin


class Gumbel(Plugin):
    """Gumbel-max sampling with a temperature, as LLaDA samples: in float64,
    ``argmax(logits - temperature * log(-log u))`` (the log of LLaDA's
    ``exp(logits) / (-log u) ** temperature``).  ``temperature=0`` is greedy.
    Confidence stays the softmax probability of the sampled token under the clean logits."""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @attrs.frozen
    class Options:
        temperature: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))

    @property
    def stochastic(self) -> bool:
        return self.options.temperature > 0

    @hookimpl
    def dllm_start(self, state) -> None:
        self.generator = torch.Generator(device=state.device).manual_seed(state.config.seed)

    @hookimpl
    def dllm_sample(self, state, logits) -> torch.Tensor:
        values = logits.values
        if self.options.temperature == 0:
            return ops.argmax_except(values, state.config.mask_id)
        wide = values.to(torch.float64)
        u = torch.rand(wide.shape, generator=self.generator, device=wide.device, dtype=torch.float64)
        noisy = wide - self.options.temperature * torch.log(-torch.log(u.clamp_min(1e-300)))
        return ops.argmax_except(noisy, state.config.mask_id)
