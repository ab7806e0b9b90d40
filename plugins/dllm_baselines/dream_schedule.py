"""Dream's step schedule (hook ``dllm_schedule``)."""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import Plan, Plugin, hookimpl


class DreamSchedule(Plugin):
    """The number of tokens Dream's ``diffusion_generate`` commits per step.

    Dream walks ``timesteps = linspace(1, eps, steps + 1)`` (float32) and, at step ``i`` with
    ``t, s = timesteps[i], timesteps[i + 1]`` and ``M`` positions still masked, commits
    ``int(M * (1 - s / t))`` of them, all that are left at its last step.  With as many steps as
    tokens that is nothing at the first step (``M (1 - eps) / steps`` is just under 1) and the
    rounding leftovers at the last (two at gen 64 and 256).  Computed here with the same float32 operations, so the counts are Dream's
    bit for bit; which positions commit is the scoring plugin's (``low_confidence`` for Dream's
    ``maskgit_plus``, ``margin`` for ``topk_margin``, ``entropy`` for ``entropy``).

    The window is LLaDA's: the first block with a masked position, ``steps_per_block`` steps
    each; ``block_length == gen_length`` (Dream's own setting: no blocks) is exactly
    ``diffusion_generate``.  ``M`` is the row's own count: Dream divides the batch's count by the
    batch size, which is the same number there (left-padded rows all start with ``gen_length``
    masks and commit equally), and stays right when a row is cut short by ``eot``.

    A step that commits nothing still runs its forward (``empty_steps``): a row takes exactly
    ``steps`` forwards, as many as Dream's loop.  (Ye et al., "Dream 7B", arXiv 2508.15487.)
    """

    empty_steps = True

    @attrs.frozen
    class Options:
        eps: float = attrs.field(default=1e-3, validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)])

    @hookimpl
    def dllm_schedule(self, state) -> Plan:
        config = state.config
        B, G, width, steps = state.batch_size, config.gen_length, config.block_length, config.steps_per_block
        per_block = state.masked.view(B, config.num_blocks, width).sum(-1)
        block = (per_block > 0).long().argmax(-1)  # first block with a masked position
        start = block * width
        masked = per_block.gather(1, block[:, None]).squeeze(1)
        step = state.steps_in_window(start)
        timesteps = torch.linspace(1, self.options.eps, steps + 1, device=state.device)
        t = timesteps[step.clamp(max=steps - 1)]
        s = timesteps[(step + 1).clamp(max=steps)]
        # Dream's int(num_mask_token * (1 - s / t)): a float32 product truncated toward zero.
        count = (masked.float() * (1 - s / t)).long()
        last = step >= steps - 1
        budget = torch.where(last, masked, count)
        # A row past its declared steps (a remasking rule committed less than asked) never gets
        # an empty step: the core refuses one there.
        budget = torch.where(state.taken >= config.steps - 1, budget.clamp(min=1), budget)
        return Plan(window_start=start, window_end=(start + width).clamp(max=G), budget=budget)
