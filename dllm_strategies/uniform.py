"""The uniform-state process: the decode loop's rules when a model denoises random tokens
instead of masks (DiffusionGemma).

The loop knows two diffusion processes (``DecodeConfig.process``):

* **absorbing** (masked diffusion, LLaDA, Dream, SDAR...): an undecided position holds the mask
  token; a commit is permanent (unless a revocable plugin re-masks inside its window).
* **uniform**: an undecided position holds a real token, noise or a token accepted at the last
  step.  A block (window) starts as uniformly random tokens; at every step every position of it
  is decided anew: ``dllm_remask`` *accepts* positions, which take the step's sample
  (``dllm_sample``), and every other position keeps its token, or takes the noise a re-noising
  plugin puts in ``Commit.tokens``.  Nothing is final until the block ends: when
  ``dllm_should_stop`` says so for the row, or after ``steps_per_block`` steps.  The block then
  holds the step's estimate (the argmax of the step's logits, the token ``generate`` emits) and
  is decided for good; the row ends when no block is left.

In both processes ``DecodeState.masked`` is "undecided", so every hook keeps its meaning: a
window is the undecided positions of the open block, scores rank them, and a remasking rule that
commits the best ones (``threshold``, ``entropy_threshold``...) accepts them under the uniform
process.  Positions of blocks not opened yet hold ``mask_id``, a placeholder (a
block-autoregressive model never sees them).

The functions here are the uniform counterparts of the loop's commit and stop steps
(:mod:`dllm_strategies.decode` calls them); they enforce the process's promises: only undecided
positions are accepted; every stepping row accepts at least one (else the core accepts its best
window position, counted as forced); nothing is revoked; a decided position never changes; a
block ends within ``steps_per_block`` steps.
"""

from __future__ import annotations

from typing import Any

import torch

from dllm_strategies import ops
from dllm_strategies.errors import ConfigError, PluginError
from dllm_strategies.plugin import PROCESSES
from dllm_strategies.state import Commit, DecodeState, Plan, Proposal, SameTensors

__all__ = ["PROCESSES", "apply", "block_mask", "open_windows", "require_process", "stop"]


def require_process(plugins: Any, process: str, model: Any) -> None:
    """Refuse a run whose model's process a chosen plugin cannot serve (``Plugin.processes``)."""
    if process not in PROCESSES:
        raise ConfigError(f"model {getattr(model, 'name', '') or type(model).__name__!r} declares process "
                          f"{process!r}; the decode loop knows {', '.join(PROCESSES)}")
    for name, served in plugins.declared("processes").items():
        if process not in served:
            raise ConfigError(
                f"plugin {name!r} cannot serve the {process} process of model "
                f"{getattr(model, 'name', '') or type(model).__name__!r} (it declares processes={tuple(served)!r}); "
                "drop it from the strategy for this model")


def _fail(strategy: Any, hook: str, message: str) -> PluginError:
    owner = strategy.owners.get(hook, "core")
    return PluginError(f"plugin {owner!r} broke the {hook} contract (uniform process): {message}",
                       plugin=owner, hook=hook)


def block_mask(state: DecodeState, plan: Plan) -> torch.Tensor:
    """(B, G) bool: the undecided positions of the block holding each row's window."""
    L = state.config.block_length
    start = (torch.div(plan.window_start, L, rounding_mode="floor") * L)[:, None]
    cols = state.columns[None, :]
    return (cols >= start) & (cols < start + L) & state.masked


def open_windows(state: DecodeState, plan: Plan, vocab_size: int) -> DecodeState:
    """Fill the block a row's window enters for the first time with uniform noise (its
    undecided positions).

    One ``randint`` of (whole batch, block length) from the run's stream, and only when some row
    enters a new block, so a block's starting canvas is drawn exactly once, as ``generate``
    draws it at the start of each canvas."""
    moved = plan.window_start is not state.window_start  # a schedule keeping its window hands back the same tensor
    if not moved or not bool((plan.window_start != state.window_start).any()):  # most steps: no window moved
        return state
    L = state.config.block_length
    block = torch.div(plan.window_start, L, rounding_mode="floor")
    entering = block != torch.div(state.window_start, L, rounding_mode="floor")  # -1 before the first step
    if not bool(entering.any()):
        return state
    cols = state.columns[None, :]
    start = (block * L)[:, None]
    fresh = entering[:, None] & block_mask(state, plan)
    noise = state.rng.randint(vocab_size, L, state.rows)
    offset = (cols - start).clamp(0, L - 1)
    return state.evolve(response=torch.where(fresh, noise.gather(1, offset), state.response))


_WINDOW_BLOCK = SameTensors()  # (B, 1) block index of the window (same tensors while it stays)


def apply(strategy: Any, state: DecodeState, plan: Plan, proposal: Proposal, commit: Any,
          forwards: torch.Tensor) -> tuple[DecodeState, Commit, torch.Tensor]:
    """This step's acceptance: accepted positions take ``Commit.tokens`` (default: the sample),
    the window's other undecided positions take ``Commit.tokens`` when a plugin gives them (the
    re-noising plugin's fresh noise), else keep their tokens.  Nothing becomes final here."""
    config = state.config
    B, G = state.batch_size, config.gen_length
    if not isinstance(commit, Commit) or commit.mask.shape != (B, G) or commit.mask.dtype != torch.bool:
        raise _fail(strategy, "dllm_remask", f"must return a Commit or a ({B}, {G}) bool mask")
    if commit.revoke is not None and bool(commit.revoke.any()):
        raise _fail(strategy, "dllm_remask", "returned Commit.revoke, but under the uniform process nothing is "
                                             "committed for good before its block ends: accept fewer positions")
    accepted = commit.mask
    wrong = accepted > state.masked  # accepted and already decided
    if bool(wrong.any()):
        row, col = wrong.nonzero()[0].tolist()
        raise _fail(strategy, "dllm_remask", f"accepted response position {col} of row {int(state.rows[row])}, "
                                             "which is already decided; accept only undecided positions "
                                             "(e.g. & plan.window(state))")
    window = plan.window(state)
    if commit.tokens is not None and commit.tokens.shape != (B, G):
        raise _fail(strategy, "dllm_remask", f"Commit.tokens must be ({B}, {G})")
    forced = torch.zeros(B, dtype=torch.long, device=state.device)
    values = commit.tokens if commit.tokens is not None else proposal.tokens
    some = accepted.any(1)
    if not bool(some.all()):
        empty = ~some & (plan.budget > 0)
        reachable = proposal.scores > float("-inf")
        pick = ops.best_mask(proposal.scores, window & reachable) & empty[:, None]
        if bool((empty & ~pick.any(1)).any()):
            raise _fail(strategy, "dllm_forward", "its logits reach no undecided position of a stepping row's window")
        accepted = accepted | pick
        forced = pick.sum(1)
        values = torch.where(pick, proposal.tokens, values)  # a forced acceptance takes the sample
    if commit.tokens is None and bool((accepted > proposal.logits.reach(G, state.device)).any()):
        raise _fail(strategy, "dllm_remask", "a position was accepted that the step's logits do not reach "
                                             "(it has no sample)")
    if commit.tokens is not None:  # accepted positions take their tokens, the window's others their noise
        canvas = torch.where(accepted, values, torch.where(window, commit.tokens, state.response))
    else:
        canvas = torch.where(accepted, values, state.response)
    start = plan.window_start
    block = _WINDOW_BLOCK.get((start,), lambda: torch.div(start, config.block_length, rounding_mode="floor")[:, None])
    block_nfe = state.block_nfe.scatter_add(1, block, forwards[:, None])
    new = state.evolve(
        response=canvas, nfe=state.nfe + forwards, block_nfe=block_nfe, taken=state.taken + 1,
        window_steps=state.steps_in_window(plan.window_start) + 1, window_start=plan.window_start,
    )
    return new, Commit(mask=accepted, tokens=canvas), forced


def stop(strategy: Any, state: DecodeState, plan: Plan, proposal: Proposal,
         commit: Commit) -> tuple[DecodeState, Commit]:
    """End blocks: a row's open block ends when ``dllm_should_stop`` asks (collect-all, OR-ed)
    or after ``steps_per_block`` steps in it; its undecided positions take the step's estimate
    (the argmax of the step's logits) and are decided.  A row with nothing undecided ends."""
    config = state.config
    ending = state.window_steps >= config.steps_per_block
    for answer in strategy.call("dllm_should_stop", state=state, proposal=proposal):
        if answer is not None:
            ending = ending | (answer if answer.dtype == torch.bool else answer.bool())
    if bool(ending.any()):  # a row whose block holds nothing undecided has nothing to end
        logits = proposal.logits
        estimate = logits.widen(ops.argmax_except(logits.values, config.mask_id), config.mask_id, config.gen_length)
        final = block_mask(state, plan) & ending[:, None]
        if bool((final > logits.reach(config.gen_length, state.device)).any()):  # final and not reached
            raise _fail(strategy, "dllm_forward", "a block ended but the step's logits do not cover all of it")
        state = state.evolve(response=torch.where(final, estimate, state.response),
                             commit_step=torch.where(final, state.step, state.commit_step))
    return state.evolve(finished=state.finished | state.of_masked(_nothing_undecided), step=state.step + 1), commit


def _nothing_undecided(state: DecodeState) -> torch.Tensor:
    return ~state.masked.any(1)
