"""The kit's per-process parts: which models a spec is checked on, and the uniform process's
promises (the absorbing ones are :func:`dllm_strategies.testing.invariants.check_step`'s).

Both processes promise, per step: the prompt never changes; a decided position never changes
(undecided means masked under the absorbing process, in a block not ended yet under the uniform
one); every stepping row commits (absorbing) or accepts (uniform) at least one position by the
strategy's own choice.  The uniform process adds: the positions a step decides are the block's
estimate, the argmax of the step's logits (or the fill token, when a block-autoregressive
model's text ended before them); a step changes nothing outside the block holding its window;
a block ends within ``steps_per_block`` steps; every row ends within ``steps`` steps.  A run
under the uniform process is random by nature (its blocks start as noise drawn for the whole
batch), so the kit does not compare a batch with its rows decoded alone; the same seed must
still give the same output.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import torch

from dllm_strategies import ops
from dllm_strategies.models.diffusion_gemma import Generation, tiny_diffusion_gemma
from dllm_strategies.testing.fakes import FakeModel


@attrs.define(eq=False)
class UniformFakeModel(FakeModel):
    """A :class:`FakeModel` whose diffusion process is uniform (its ``mask_id`` is only the
    placeholder of blocks not opened yet)."""

    process: str = "uniform"


def served(run: Any) -> tuple[str, ...]:
    """The processes every plugin of a started strategy serves (in the loop's order)."""
    common = ["absorbing", "uniform"]
    for processes in run.declared("processes").values():
        common = [p for p in common if p in processes]
    return tuple(common)


@functools.cache
def kit_diffusion_gemma() -> Any:
    """The tiny DiffusionGemma the kit runs a uniform-only plugin on when it needs a real model
    (built once: runs never change it)."""
    return tiny_diffusion_gemma(canvas_length=4, hidden_size=16, num_layers=1, sharpness=30.0, seed=3,
                                generation=Generation(max_denoising_steps=3, stability_threshold=0,
                                                      confidence_threshold=0.6))


def check_uniform_step(spec: str, record: Any, violation: type[AssertionError]) -> None:
    """The uniform process's own promises on one step (see the module docstring)."""
    before, after = record.before, record.after
    config = before.config
    where = _locate(record)
    L = config.block_length
    start = (torch.div(record.plan.window_start, L, rounding_mode="floor") * L)[:, None]
    cols = before.columns[None, :]
    block = (cols >= start) & (cols < start + L)
    moved = (after.response != before.response) & after.live & ~block
    if bool(moved.any()):
        raise violation(f"a step changed a position outside the block of its window ({where(moved)}) with {spec!r}")
    decided_now = after.commit_step == before.step
    logits = record.proposal.logits
    estimate = logits.widen(ops.argmax_except(logits.values, config.mask_id), config.mask_id, config.gen_length)
    wrong = decided_now & after.live & (after.response != estimate) & (after.response != config.fill_id)
    if bool(wrong.any()):
        raise violation(f"a block ended but a position does not hold the step's estimate, the argmax of its "
                        f"logits ({where(wrong)}) with {spec!r}")
    if bool((after.window_steps > config.steps_per_block).any()):
        raise violation(f"a block took more than steps_per_block={config.steps_per_block} steps with {spec!r}")
    full = (after.window_steps == config.steps_per_block) & (after.masked & block).any(1)
    if bool(full.any()):
        raise violation(f"a block took its {config.steps_per_block} steps but did not end (row "
                        f"{int(record.rows[full.nonzero()[0, 0]])}) with {spec!r}")


def _locate(record: Any):
    def where(mask: torch.Tensor) -> str:
        row, col = mask.nonzero()[0].tolist()
        return f"row {int(record.rows[row])}, response position {col}, step {record.before.step}"

    return where


__all__ = ["UniformFakeModel", "check_uniform_step", "kit_diffusion_gemma", "served"]
