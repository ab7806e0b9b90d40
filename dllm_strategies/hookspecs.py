"""Hook contracts of dllm-strategies.

Every decoder is one loop (``dllm_strategies.decode``); strategies differ only in the
implementations of these hooks.  One step of the loop, on the running (unfinished) rows::

    plan      = dllm_schedule(state)                      # window + budget per row
    logits    = dllm_forward(model, state, plan)          # model execution
    tokens    = dllm_sample(state, logits, plan)          # candidate token per position
    scores    = dllm_score(state, logits, tokens, confidence, plan)  # ranking key
    commit    = dllm_remask(state, proposal, plan)        # which masked positions to fill
    state     = core applies commit (>= 1 per running row, prompt untouched, revocation rules)
    cuts      = dllm_truncate(state, proposal)            # shrink live lengths (EoT)
    stops     = dllm_should_stop(state)                   # end rows early
    dllm_after_step(state, proposal, commit)              # observers

``dllm_start`` runs once before the first step.  The core provides a default for every
``firstresult`` hook (LLaDA's semi-autoregressive low-confidence decoding), registered
``trylast``, so a strategy implements only what it changes.  A ``firstresult`` hook is owned by
at most one chosen plugin (two owners is an error when the spec is parsed, unless the spec marks
the winner with ``!``); any plugin may wrap one (``@hookimpl(wrapper=True)``) to adjust what the
owner returned, or return None to defer to the next implementation.

All tensors are on the model's device.  (B, G) tensors cover the response region of the live
rows; column j is response position j.  The prompt is not writable by any hook.

Every hook serves both diffusion processes (``state.config.process``, see
:mod:`dllm_strategies.uniform`): under the absorbing process an undecided ("masked") position
holds the mask token and a commit is final; under the uniform process it holds a token re-decided
every step, ``dllm_remask`` accepts positions for one step, and a block's positions are decided
when ``dllm_should_stop`` ends the block (or after ``steps_per_block`` steps).  A plugin declares
the processes it serves (``Plugin.processes``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    import torch

    from dllm_strategies.models.adapter import DiffusionModelLike
    from dllm_strategies.state import Commit, DecodeState, Logits, Plan, Proposal

PROJECT = "dllm_strategies"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ------------------------------------------------------------------------------------------
# Run lifecycle
# ------------------------------------------------------------------------------------------
@hookspec
def dllm_start(state: DecodeState, model: DiffusionModelLike) -> None:
    """Called once before the first step, on every plugin (collect-all; results ignored).

    Use it to set up per-run state: a plugin instance lives for exactly one run, so keeping
    per-row scratch tensors on ``self`` (indexed by ``state.rows``) is safe.

    :param state: the initial state (all rows live, every response position masked).
    :param model: the model of this run.
    """


# ------------------------------------------------------------------------------------------
# Step scheduling
# ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def dllm_schedule(state: DecodeState) -> Plan | None:
    """Decide the open window and the commit budget of each running row for this step.

    Stops at first non-None result.  Core default: LLaDA's semi-autoregressive blocks of
    ``config.block_length``; the window is the first block that still has a masked position;
    the budget is ``ceil(masked_in_block / steps_left_in_block)``, which reproduces LLaDA's
    linear schedule (``masked // steps`` per step, the remainder on the first steps).

    Uniform process: the block a window enters for the first time starts as noise; the budget
    is how many positions to accept.

    :param state: the running rows.
    :returns: a :class:`~dllm_strategies.state.Plan` with budget >= 1 per row (0 allowed before a
        row's last declared step when the plugin declares ``empty_steps = True``).
    """


# ------------------------------------------------------------------------------------------
# Model forward
# ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def dllm_forward(model: DiffusionModelLike, state: DecodeState, plan: Plan) -> Logits | None:
    """Run the model and return logits for a span of response columns covering the window.

    Stops at first non-None result.  Core default: one forward over prompt + live response
    (padding and cut positions masked out of attention), logits for the live response columns.
    Caches (prefix, dual) and other input tricks implement this hook.  Every call of
    ``model.logits`` is counted by the core (NFE, positions); never count in a plugin.

    :param model: the run's model; call ``model.logits(...)`` (metered).
    :param state: the running rows.
    :param plan: this step's plan (window per row).
    :returns: :class:`~dllm_strategies.state.Logits` (B, W, V) for columns [start, start + W).
    """


# ------------------------------------------------------------------------------------------
# Token selection
# ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def dllm_sample(state: DecodeState, logits: Logits, plan: Plan) -> torch.Tensor | None:
    """Choose a candidate token for every position the logits cover.

    Stops at first non-None result.  Core default: greedy ``argmax``.  Gumbel-max sampling
    with a temperature is the ``gumbel`` plugin.

    :returns: (B, W) token ids for the logits' span (never the mask id).
    """


@hookspec(firstresult=True)
def dllm_score(state: DecodeState, logits: Logits, tokens: torch.Tensor, confidence: torch.Tensor,
               plan: Plan) -> torch.Tensor | None:
    """Score each candidate; higher scores are committed first.

    Stops at first non-None result.  Core default: the softmax probability of the candidate
    (LLaDA's ``low_confidence``).  Examples: margin, negative entropy, random.  The core sets
    the score of positions that are not masked to -inf afterwards.

    :param tokens: (B, W) candidates from ``dllm_sample``.
    :param confidence: (B, W) softmax probability of each candidate (computed once by the core).
    :returns: (B, W) float scores for the logits' span.
    """


# ------------------------------------------------------------------------------------------
# Remasking
# ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def dllm_remask(state: DecodeState, proposal: Proposal, plan: Plan) -> Commit | torch.Tensor | None:
    """Decide which masked positions to commit now (the rest stay masked).

    Stops at first non-None result.  Core default: the ``plan.budget`` highest-scored masked
    positions inside the window.  Uniform process: the returned positions are *accepted* for this
    step only (they hold ``Commit.tokens`` or the sample until the next step decides anew); the
    window's other undecided positions take ``Commit.tokens`` where given (re-noising), else keep
    their tokens; ``revoke`` is an error.  A plugin may commit more than the budget or outside the
    window (e.g. a whole row at once), must commit only masked positions, and should commit
    at least one per running row: if it commits none in a row, the core commits that row's
    best-scored window position and counts it in ``DecodeResult.forced``.  Only a plugin with
    ``revocable = True`` may return ``Commit.revoke`` (re-mask committed positions of the
    current window, never the prompt or an earlier block).

    :param proposal: candidates, confidences and scores over the response.
    :returns: a :class:`~dllm_strategies.state.Commit`, or a (B, G) bool mask.
    """


# ------------------------------------------------------------------------------------------
# Termination
# ------------------------------------------------------------------------------------------
@hookspec
def dllm_truncate(state: DecodeState, proposal: Proposal) -> torch.Tensor | None:
    """Shrink rows' live length after this step's commit (collect-all; the core keeps the
    element-wise minimum, so a live length never grows).

    Positions at or past the new live length are filled with ``config.fill_id`` and leave the
    model's input from the next step on (End-of-Text truncation).

    :param state: the running rows after this step's commit.
    :param proposal: this step's candidates (e.g. positions predicting end-of-text).
    :returns: (B,) new live lengths, or None for no change.
    """


@hookspec
def dllm_should_stop(state: DecodeState, proposal: Proposal) -> torch.Tensor | None:
    """End rows early (collect-all; results OR-ed per row).  A row with no masked position
    always ends; a finished row never changes again.

    Uniform process: True ends the row's open *block* (its positions take the step's estimate,
    the argmax of the step's logits, and are decided); the row ends when no block is left.  A
    block also ends after ``steps_per_block`` steps.  DiffusionGemma's stable-and-confident rule
    is ``stable_stop``.

    :param state: the running rows after this step's commit (and truncation).
    :param proposal: this step's candidates and logits (what a stop rule judges).
    :returns: (B,) bool, True for rows (uniform: blocks) to finish now, or None.
    """


# ------------------------------------------------------------------------------------------
# Observation
# ------------------------------------------------------------------------------------------
@hookspec
def dllm_after_step(state: DecodeState, proposal: Proposal, commit: Commit) -> None:
    """Observe a finished step (collect-all; results ignored): traces, metrics, progress.

    :param state: the running rows after the step (commit and truncation applied).
    :param proposal: the step's candidates.
    :param commit: what was committed, forced progress included.
    """


# ------------------------------------------------------------------------------------------
# Registration (called on every installed plugin, not only the chosen ones)
# ------------------------------------------------------------------------------------------
@hookspec
def dllm_models(register: Any) -> None:
    """Register named models: ``register(name, path, *, strategy=None, block_length=None, description="")``.

    ``load_model(name)`` then loads ``path``; ``strategy`` and ``block_length`` are the decoding
    recommended for it (used by the CLI and the harness when the user gives none).
    Implement it on a module or as a ``staticmethod`` (it is called without a run).
    """


@hookspec
def dllm_tasks(register: Any) -> None:
    """Register evaluation tasks: ``register(name, task)``.

    ``task`` is any object with ``test_problems() -> list``, ``validation_problems(size, seed)
    -> list`` (problems with ``question`` and ``answer``) and ``extract_answer(text)``; the bench
    (``dllm-strategies bench --task NAME``) and the lm-eval local tasks read problems through it,
    never through a plugin's module.  Implement on a module or as a staticmethod.
    """


@hookspec
def dllm_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add subcommands to the ``dllm-strategies`` CLI (``subparsers.add_parser(...)`` with
    ``set_defaults(func=callable(args) -> int)``).  Implement on a module or as a staticmethod.
    """
