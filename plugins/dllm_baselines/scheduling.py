"""Step schedules (hook ``dllm_schedule``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import hookimpl
from dllm_strategies.defaults import semi_ar_plan
from dllm_strategies.plugin import Plugin


class TopK(Plugin):
    """A fixed number ``k`` of tokens per step inside LLaDA's semi-autoregressive blocks
    (the last step of a block commits what is left), ignoring ``steps``."""

    processes = ("absorbing", "uniform")  # its rule reads the undecided positions of either process

    @attrs.frozen
    class Options:
        k: int = attrs.field(default=2, validator=attrs.validators.ge(1))

    @hookimpl
    def dllm_schedule(self, state):
        plan = semi_ar_plan(state)
        return attrs.evolve(plan, budget=torch.full_like(plan.budget, self.options.k))
