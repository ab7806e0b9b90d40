"""The decode loop: one loop for every strategy.

``decode(model, prompts, strategy="threshold(tau=0.9)+eot", gen_length=256, block_length=32)``
builds the run's own plugin manager, then repeats, on the rows still running (unfinished)::

    plan -> forward -> sample -> score -> remask -> commit -> truncate -> stop -> observe

The core, not the plugins, enforces the decoder's promises: the prompt is never written;
only masked positions are committed; every running row commits at least one token per step
(unless its schedule declares ``empty_steps`` and plans none before the row's last step);
only a revocable plugin un-commits, and only inside the current window; a live length never
grows; a finished row never changes; every model call is counted.  A hook that raises is
reported as :class:`~dllm_strategies.errors.PluginError` naming the plugin and the hook,
and nothing partial is returned.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from dllm_strategies import ops, uniform
from dllm_strategies.errors import ConfigError, ModelOutputError, PluginError, StepLimitError
from dllm_strategies.strategy import RunPlugins, Strategy
from dllm_strategies.state import Commit, DecodeConfig, DecodeResult, DecodeState, Logits, Plan, Proposal, SameTensors


class MeteredModel:
    """The model as plugins see it: every ``logits`` call is counted and checked.

    ``charged`` (B,) counts, during a step, the calls each of the step's rows took part in (the
    core sets it before ``dllm_forward``): a call names its rows with ``rows=``, else it counts
    for every row.  A row's NFE grows by its own count, so a forward over some rows only (a
    cache refreshing the rows that crossed a block boundary) costs the others nothing."""

    def __init__(self, model: Any):
        self.model = model
        self.calls = 0
        self._positions: torch.Tensor | int = 0
        self.charged: torch.Tensor | None = None
        self.encoder_calls = 0

    @property
    def positions(self) -> int:
        return int(self._positions)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               rows: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The model's logits; ``rows`` (n,): the positions, among the step's rows, of the n
        input rows (None: the input is every row of the step)."""
        if rows is not None and (rows.dim() != 1 or rows.numel() != input_ids.shape[0] or rows.is_floating_point()):
            raise ValueError(f"model.logits(rows=...) must name one row of the step per input row: an integer "
                             f"tensor of shape ({input_ids.shape[0]},), got shape {tuple(rows.shape)}")
        out = self.model.logits(input_ids, attention_mask=attention_mask, **kwargs)
        self.calls += 1
        if self.charged is not None:
            if rows is None:
                self.charged += 1
            else:
                self.charged[rows] += 1
        if attention_mask is not None and attention_mask.dim() == 2:
            self._positions = self._positions + attention_mask.sum()
        else:
            self._positions = self._positions + input_ids.numel()
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != input_ids.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(
                f"model {_model_name(self.model)} returned logits of shape {shape} for input "
                f"{tuple(input_ids.shape)}; expected (batch, positions, vocab)"
            )
        if out.shape[-1] != self.model.vocab_size:
            raise ModelOutputError(
                f"model {_model_name(self.model)} returned logits over {out.shape[-1]} tokens but its "
                f"vocab_size is {self.model.vocab_size}; check the checkpoint's config and head"
            )
        return out

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        """An encoder pass of a block-autoregressive model (finished blocks into its exact cache):
        counted apart (``DecodeResult.encoder_forwards``), never as NFE."""
        out = self.model.encode(*args, **kwargs)
        self.encoder_calls += 1
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def _model_name(model: Any) -> str:
    return repr(getattr(model, "name", "") or type(model).__name__)


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------
def encode_prompts(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]] | torch.Tensor,
                   *, chat: bool = False, pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, P) ids and attention mask from texts or id lists."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ConfigError(f"prompt tensor must be (batch, length), got shape {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if isinstance(prompts, (str, bytes)) or len(prompts) == 0:
        raise ConfigError("prompts must be a non-empty list (of strings or of token id lists)")
    rows: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ConfigError(f"prompt {i} is empty; give every row some text")
            tokenizer = getattr(model, "tokenizer", None)
            if tokenizer is None:
                raise ConfigError("text prompts need a model with a tokenizer; pass token ids instead")
            if chat:
                if not getattr(tokenizer, "chat_template", None):
                    raise ConfigError(f"model {_model_name(model)} has no chat template; decode without chat=True")
                prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True)
            ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
            _warn_unknown_words(tokenizer, prompt, ids, i, add_special_tokens=not chat)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ConfigError(f"prompt {i} has no tokens; give every row at least one token")
        if model.mask_id in ids:
            raise ConfigError(f"prompt {i} contains the mask token (id {model.mask_id}); prompts must be clean")
        rows.append(ids)
    width = max(map(len, rows))
    pad = pad_id if pad_id is not None else model.fill_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, mask


def _warn_unknown_words(tokenizer: Any, text: str, ids: list[int], index: int, *, add_special_tokens: bool) -> None:
    """Warn when words of a prompt are not in the tokenizer's vocabulary: the model reads each as
    the unknown token, and a model that never saw it in training often answers nothing."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in ids:
        return
    words: list[str] = []
    if getattr(tokenizer, "is_fast", False):  # only fast tokenizers give the offsets that name the words
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        words = [text[a:b] for t, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
                 if t == unk]
    named = f" ({', '.join(map(repr, dict.fromkeys(words)))})" if words else ""
    warnings.warn(f"prompt {index}: {ids.count(unk)} word(s) are not in the tokenizer's vocabulary{named}; the "
                  f"model reads them as {getattr(tokenizer, 'unk_token', None) or 'the unknown token'}, and its "
                  "answer may be empty or wrong", stacklevel=3)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
def decode(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]] | torch.Tensor, *,
           strategy: str | Strategy | Sequence[Any] | None = None, gen_length: int = 64,
           block_length: int | None = None, steps: int | None = None, seed: int = 0,
           chat: bool = False, reference: torch.Tensor | None = None, trace: bool = False,
           max_steps: int | None = None, extras: dict[str, Any] | None = None,
           prompt_mask: torch.Tensor | None = None) -> DecodeResult:
    """Decode a batch of prompts with a strategy.

    Args:
        model: a :class:`~dllm_strategies.models.DiffusionModel` (or any object with its shape).
        prompts: texts, token id lists, or a (B, P) tensor (with ``prompt_mask`` for padding).
        strategy: a spec such as ``"threshold(tau=0.9)+eot"``, a list of names, ``(name, options)``
            and plugin objects (``[MyRule(MyRule.Options(k=2)), "eot"]``), a parsed
            :class:`Strategy` (parse once, decode many times), or None for the core defaults
            (LLaDA low-confidence).  Each call starts fresh plugin instances.
        gen_length / block_length / steps: as in LLaDA (block_length defaults to gen_length,
            steps to gen_length: one token per step).
        seed: seed of every random choice.
        chat: wrap text prompts in the tokenizer's chat template.
        reference: (B, gen_length) reference response for oracle plugins.
        trace: keep the response after every step (``DecodeResult.trace``).
    """
    plugins = strategy if isinstance(strategy, RunPlugins) else Strategy.parse(strategy).start()
    if prompt_mask is not None and isinstance(prompts, torch.Tensor):
        ids, mask = prompts.long(), prompt_mask.bool()
        if not bool(mask.any(-1).all()):
            raise ConfigError("a prompt row is all padding; give every row at least one token")
    else:
        ids, mask = encode_prompts(model, prompts, chat=chat)
    fixed = getattr(model, "block_length", None)  # a block-autoregressive model's own block width
    config = DecodeConfig.for_model(
        model, gen_length=gen_length, seed=seed, steps=steps,
        block_length=block_length if block_length is not None else fixed or gen_length,  # 0 is an error, not unset
        max_steps=max_steps, trace=trace,
    )
    uniform.require_process(plugins, config.process, model)
    limit = getattr(model, "max_positions", None)
    if limit is not None and ids.shape[1] + gen_length > limit:
        raise ConfigError(
            f"prompt ({ids.shape[1]} tokens) + gen_length ({gen_length}) = {ids.shape[1] + gen_length} exceeds "
            f"the model's {limit} positions; shorten the prompt or the generation"
        )
    device = model.device
    if reference is not None:
        reference = reference.to(device)
    state = DecodeState.start(ids.to(device), mask.to(device), config, reference=reference, extras=extras)
    return run(plugins, model, state)


@attrs.frozen
class StepRecord:
    """What one step did, on its running rows (``rows``: their indices in the batch).

    Attributes:
        before / after: the running rows' state before and after the step.
        plan, proposal, commit: the step's plan, candidates and applied commit.
        forced: (B_running,) commits the core added because the strategy committed none.
    """

    rows: torch.Tensor = attrs.field(eq=False)
    before: DecodeState = attrs.field(eq=False)
    after: DecodeState = attrs.field(eq=False)
    plan: Plan = attrs.field(eq=False)
    proposal: Proposal = attrs.field(eq=False)
    commit: Commit = attrs.field(eq=False)
    forced: torch.Tensor = attrs.field(eq=False)


@attrs.define
class Run:
    """One decode run, advanced a step at a time: ``while not run.done: run.step()``,
    then ``run.result()``.  :func:`decode` does exactly that; the invariant kit
    (``dllm_strategies.testing``) checks each :class:`StepRecord` in between.  Autograd is
    off inside: decoding never needs gradients."""

    strategy: RunPlugins
    model: Any
    state: DecodeState
    metered: MeteredModel
    forced: torch.Tensor
    frames: list[torch.Tensor] | None
    started: float

    @classmethod
    @torch.no_grad()
    def begin(cls, strategy: RunPlugins | Strategy, model: Any, state: DecodeState) -> Run:
        if isinstance(strategy, Strategy):
            strategy = strategy.start()
        runner = getattr(model, "runner", None)  # a block-autoregressive model's own loop (blocks.BlockRun)
        if runner is not None and cls is Run:
            return runner.begin(strategy, model, state)
        metered = MeteredModel(model)
        started = time.perf_counter()
        strategy.call("dllm_start", state=state, model=metered)
        return cls(strategy=strategy, model=model, state=state, metered=metered,
                   forced=torch.zeros(state.batch_size, dtype=torch.long, device=state.device),
                   frames=[] if state.config.trace else None, started=started)

    @property
    def done(self) -> bool:
        return bool(self.state.finished.all())

    def step(self) -> StepRecord:
        """Take one step (autograd off) and return what it did."""
        with torch.no_grad():
            return self._advance()

    def _advance(self) -> StepRecord:
        state, config = self.state, self.state.config
        running = (~state.finished).nonzero().squeeze(1)
        if state.step >= config.max_steps:
            raise StepLimitError(
                f"decoding reached max_steps={config.max_steps} with masked positions left in rows "
                f"{running.tolist()}; plugin {self.strategy.owners['dllm_remask']!r} keeps re-masking "
                "(raise max_steps or make it revoke less)"
            )
        whole = running.numel() == state.batch_size
        part = state if whole else state.take(running)
        record = _step(self.strategy, self.metered, part, running)
        self.forced[running] += record.forced
        self.state = record.after if whole else state.put(running, record.after)
        if self.frames is not None:
            self.frames.append(self.state.response.clone())
        return record

    def result(self) -> DecodeResult:
        state = self.state
        lengths = answer_lengths(state.response, state.config)
        return DecodeResult(
            tokens=state.response, text=_texts(self.model, state.response, state.config, lengths),
            answer_length=lengths, steps=state.taken,
            nfe=state.nfe, block_nfe=state.block_nfe, forwards=self.metered.calls, positions=self.metered.positions,
            encoder_forwards=self.metered.encoder_calls, commit_step=state.commit_step, forced=self.forced, wall_time=time.perf_counter() - self.started,
            trace=torch.stack(self.frames) if self.frames else None,
        )


def run(strategy: RunPlugins, model: Any, state: DecodeState) -> DecodeResult:
    """Run the loop from ``state`` to the end (see :func:`decode`)."""
    current = Run.begin(strategy, model, state)
    with torch.no_grad():  # once for the run, not once a step
        while not current.done:
            current._advance()
    return current.result()


def _step(strategy: RunPlugins, model: MeteredModel, state: DecodeState, rows: torch.Tensor) -> StepRecord:
    before, config = state, state.config
    G = config.gen_length
    plan = strategy.call("dllm_schedule", state=state)
    _check_plan(strategy, plan, state)
    if config.process == "uniform":  # a window opening on positions never opened starts as noise
        before = state = uniform.open_windows(state, plan, model.vocab_size)
    model.charged = torch.zeros(state.batch_size, dtype=torch.long, device=state.device)
    logits = strategy.call("dllm_forward", model=model, state=state, plan=plan)
    _check_logits(strategy, logits, state)
    tokens = strategy.call("dllm_sample", state=state, logits=logits, plan=plan)
    confidence = ops.probability_of(logits.probabilities, tokens)
    scores = strategy.call("dllm_score", state=state, logits=logits, tokens=tokens, confidence=confidence, plan=plan)
    _check_finite(model, confidence, state)
    proposal = Proposal(
        tokens=logits.widen(tokens, config.mask_id, G),
        confidence=logits.widen(confidence, 0.0, G),
        # -inf where nothing can be committed: widen fills what the logits do not reach
        scores=torch.where(state.masked, logits.widen(scores.to(confidence.dtype), float("-inf"), G), float("-inf")),
        logits=logits,
    )
    commit = _as_commit(strategy.call("dllm_remask", state=state, proposal=proposal, plan=plan))
    if config.process == "uniform":
        state, commit, forced = uniform.apply(strategy, state, plan, proposal, commit, forwards=model.charged)
        state = _truncate(strategy, state, proposal)
        state, commit = uniform.stop(strategy, state, plan, proposal, commit)
    else:
        state, commit, forced = _apply(strategy, state, plan, proposal, commit, forwards=model.charged)
        state = _truncate(strategy, state, proposal)
        state, commit = _stop(strategy, state, proposal, commit)
    strategy.call("dllm_after_step", state=state, proposal=proposal, commit=commit)
    return StepRecord(rows=rows, before=before, after=state, plan=plan, proposal=proposal, commit=commit,
                      forced=forced)


# ------------------------------------------------------------------------------------------
# Enforcement
# ------------------------------------------------------------------------------------------
def _fail(strategy: RunPlugins, hook: str, message: str) -> PluginError:
    owner = strategy.owners.get(hook, "core")
    return PluginError(f"plugin {owner!r} broke the {hook} contract: {message}", plugin=owner, hook=hook)


def _check_plan(strategy: RunPlugins, plan: Any, state: DecodeState) -> None:
    B, G = state.batch_size, state.config.gen_length
    if not isinstance(plan, Plan):
        raise _fail(strategy, "dllm_schedule", f"returned {type(plan).__name__}, expected a Plan")
    for name in ("window_start", "window_end", "budget"):
        value = getattr(plan, name)
        if not isinstance(value, torch.Tensor) or value.shape != (B,):
            raise _fail(strategy, "dllm_schedule", f"Plan.{name} must be a ({B},) tensor")
    # every bound as a quantity that must be >= 0 (the budget: > 0 unless empty steps are
    # declared); the window's once per window (a schedule keeping it hands back the same tensors)
    start, end = plan.window_start, plan.window_end
    window_fits = _CHECKED_WINDOW.get(
        (start, end, state.columns), lambda: min(torch.stack([start, G - end, end - start - 1]).amin(1).tolist()) >= 0)
    least_budget = int(plan.budget.amin())
    if not window_fits or least_budget < 0:
        raise _fail(strategy, "dllm_schedule", "needs 0 <= window_start < window_end <= gen_length and budget >= 1 "
                                               "(0 only from a schedule declaring empty_steps)")
    # A step that commits nothing (Dream's first step) only from a schedule that says it plans
    # one, and never at or past a row's last declared step: a row still takes at most
    # steps - 1 empty steps, so every run ends.
    if least_budget == 0:
        empty = plan.budget == 0
        if not getattr(strategy.owner("dllm_schedule"), "empty_steps", False):
            raise _fail(strategy, "dllm_schedule", "planned budget 0 (a step that commits nothing) but does not "
                                                   "declare empty_steps = True; plan a budget >= 1 or declare it")
        late = empty & (state.taken >= state.config.steps - 1)
        if bool(late.any()):
            row = int(late.nonzero()[0, 0])
            raise _fail(strategy, "dllm_schedule",
                        f"planned budget 0 for row {int(state.rows[row])} at its step {int(state.taken[row]) + 1} of "
                        f"{state.config.steps}; an empty step is allowed only before a row's last declared step")


_CHECKED_WINDOW = SameTensors()


def _check_logits(strategy: RunPlugins, logits: Any, state: DecodeState) -> None:
    if not isinstance(logits, Logits):
        raise _fail(strategy, "dllm_forward", f"returned {type(logits).__name__}, expected Logits")
    values = logits.values
    if values.dim() != 3 or values.shape[0] != state.batch_size or logits.start < 0 or \
            logits.stop > state.config.gen_length:
        raise _fail(strategy, "dllm_forward",
                    f"Logits of shape {tuple(values.shape)} at start {logits.start} do not fit "
                    f"{state.batch_size} rows x {state.config.gen_length} response positions")
    cover = logits.cover
    if cover is not None and (cover.shape != values.shape[:2] or cover.dtype != torch.bool):
        raise _fail(strategy, "dllm_forward", f"Logits.cover must be a bool tensor of shape {tuple(values.shape[:2])}")


def _check_finite(model: Any, confidence: torch.Tensor, state: DecodeState) -> None:
    # a confidence is a probability: it is not finite only as NaN (from NaN or +inf logits), and a
    # NaN anywhere makes the sum NaN
    if bool(confidence.sum().isnan()):
        row, col = (~torch.isfinite(confidence)).nonzero()[0].tolist()
        raise ModelOutputError(
            f"model {_model_name(model.model)} returned NaN or inf logits at step {state.step} "
            f"(row {int(state.rows[row])}, logits column {col}); check its weights and dtype "
            "(float16 overflows; try bfloat16 or float32)"
        )


def _as_commit(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Commit(mask=value)
    return value


def _apply(strategy: RunPlugins, state: DecodeState, plan: Plan, proposal: Proposal,
           commit: Any, forwards: torch.Tensor) -> tuple[DecodeState, Commit, torch.Tensor]:
    config = state.config
    B, G = state.batch_size, config.gen_length
    if not isinstance(commit, Commit) or commit.mask.shape != (B, G) or commit.mask.dtype != torch.bool:
        raise _fail(strategy, "dllm_remask", f"must return a Commit or a ({B}, {G}) bool mask")
    masked = state.masked
    chosen = commit.mask
    wrong = chosen & ~masked
    if bool(wrong.any()):
        row, col = wrong.nonzero()[0].tolist()
        raise _fail(strategy, "dllm_remask",
                    f"committed response position {col} of row {int(state.rows[row])}, which is not masked; "
                    "commit only masked positions (e.g. & plan.window(state))")
    # Progress: a row that committed nothing gets its best-scored window position (unless its
    # plan asked for nothing: checked above, only from a schedule declaring empty_steps).
    empty = ~chosen.any(1) & (plan.budget > 0)
    forced = torch.zeros(B, dtype=torch.long, device=state.device)
    if bool(empty.any()):
        window = plan.window(state)
        reachable = proposal.scores > float("-inf")
        pick = ops.best_mask(proposal.scores, window & reachable)
        fallback = ops.best_mask(proposal.scores, masked & reachable)
        pick = torch.where(pick.any(1, keepdim=True), pick, fallback) & empty[:, None]
        if bool((empty & ~pick.any(1)).any()):
            raise _fail(strategy, "dllm_forward", "its logits reach no masked position of a running row")
        chosen = chosen | pick
        forced = pick.sum(1)
    values = commit.tokens if commit.tokens is not None else proposal.tokens
    if values.shape != (B, G):
        raise _fail(strategy, "dllm_remask", f"Commit.tokens must be ({B}, {G})")
    if bool((chosen & (values == config.mask_id)).any()):
        hook = "dllm_remask" if commit.tokens is not None else "dllm_sample"
        raise _fail(strategy, hook, "the mask token (or no prediction) was committed at a masked position; "
                                    "commit only positions the logits cover, with real tokens")
    response = torch.where(chosen, values, state.response)
    commit_step = torch.where(chosen, state.step, state.commit_step)
    revoke = commit.revoke
    if revoke is not None and bool(revoke.any()):
        owner = strategy.owner("dllm_remask")
        if not getattr(owner, "revocable", False):
            raise _fail(strategy, "dllm_remask", "returned Commit.revoke but is not revocable "
                                                 "(set revocable = True on the plugin class)")
        inside = plan.inside(state.columns) & state.live
        if bool((revoke & ~(inside & ~masked)).any()) or bool((revoke & chosen).any()):
            raise _fail(strategy, "dllm_remask", "may revoke only tokens committed earlier inside the current "
                                                 "window, never the prompt, an earlier block or this step's commits")
        response = response.masked_fill(revoke, config.mask_id)
        commit_step = commit_step.masked_fill(revoke, -1)
    block = torch.div(plan.window_start, config.block_length, rounding_mode="floor")[:, None]
    block_nfe = state.block_nfe.scatter_add(1, block, forwards[:, None].to(state.block_nfe.dtype))
    new = state.evolve(
        response=response, commit_step=commit_step, nfe=state.nfe + forwards, block_nfe=block_nfe,
        taken=state.taken + 1,
        window_steps=state.steps_in_window(plan.window_start) + 1, window_start=plan.window_start,
    )
    return new, Commit(mask=chosen, tokens=values, revoke=revoke), forced


def _truncate(strategy: RunPlugins, state: DecodeState, proposal: Proposal) -> DecodeState:
    cuts = [c for c in strategy.call("dllm_truncate", state=state, proposal=proposal) if c is not None]
    if not cuts:
        return state
    config = state.config
    kept = state.live_length
    for cut in cuts:
        kept = torch.minimum(kept, cut.to(kept.dtype).clamp(min=0))
    if bool((kept == state.live_length).all()):
        return state
    cols = state.columns[None, :]
    gone = (cols >= kept[:, None]) & (cols < state.live_length[:, None])
    return state.evolve(
        live_length=kept,
        response=state.response.masked_fill(gone, config.fill_id),
        commit_step=state.commit_step.masked_fill(gone, -1),
    )


def _stop(strategy: RunPlugins, state: DecodeState, proposal: Proposal, commit: Commit) -> tuple[DecodeState, Commit]:
    stop = ~state.masked.any(1)
    asked = [s for s in strategy.call("dllm_should_stop", state=state, proposal=proposal) if s is not None]
    for s in asked:
        stop = stop | s.bool()
    early = stop & state.masked.any(1)
    if bool(early.any()):
        # Ending a row early commits its remaining masked positions with this step's candidates.
        fill = state.masked & early[:, None]
        if bool((fill & (proposal.tokens == state.config.mask_id)).any()):
            raise _fail(strategy, "dllm_forward", "a row was stopped early but the step's logits do not reach all "
                                                  "its masked positions")
        state = state.evolve(response=torch.where(fill, proposal.tokens, state.response),
                             commit_step=torch.where(fill, state.step, state.commit_step))
        commit = attrs.evolve(commit, mask=commit.mask | fill)
    return state.evolve(finished=state.finished | stop, step=state.step + 1), commit


def answer_lengths(tokens: torch.Tensor, config: DecodeConfig) -> torch.Tensor:
    """(B,) response tokens before the first end-of-text / end-of-turn / fill token: the answer
    tokens of docs/metrics.md (before any stop-sequence cut, which needs the text)."""
    return ops.first_index_of(tokens, (*config.eot_ids, config.fill_id))


def _texts(model: Any, tokens: torch.Tensor, config: DecodeConfig, lengths: torch.Tensor) -> list[str]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [""] * tokens.shape[0]
    cut = [row[:end] for row, end in zip(tokens.tolist(), lengths.tolist(), strict=True)]
    return tokenizer.batch_decode(cut, skip_special_tokens=True)
