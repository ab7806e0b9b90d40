"""Immutable values the decode loop passes between hooks.

Layout.  A batch of B prompts is left-padded to width P; the response region has
``gen_length`` G columns, all starting as the mask token.  Strategies only ever see and
change the response region (B, G): the prompt is a separate tensor nobody can write.
Column j of every (B, G) tensor is response position j.

Positions at or past a row's ``live_length`` have been cut by end-of-text truncation: they
hold the fill token (end-of-text), never enter a forward again, and are not masked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import torch

from dllm_strategies import ops
from dllm_strategies.errors import ConfigError
from dllm_strategies.noise import RandomStream

_tensor = attrs.field(eq=False, repr=False)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@attrs.frozen
class DecodeConfig:
    """Settings of one decode run.

    Attributes:
        gen_length: response positions to fill (G).
        block_length: width of a semi-autoregressive block; ``gen_length`` must be a multiple.
            ``block_length == gen_length`` decodes the whole response as one block.
        steps: the schedule's step budget over the whole response; a multiple of the number
            of blocks.  ``steps == gen_length`` is one token per step.
        mask_id: the mask token.
        fill_id: token written into positions cut by truncation (end-of-text).
        eot_ids: end-of-text / end-of-turn ids (text is cut at the first of them).
        seed: seed of every random choice of the run.
        max_steps: hard cap on steps; only a revocable plugin can reach it (default 4 x G, and
            at least ``steps`` under the uniform process).
        trace: record every step's tokens in the result.
        process: ``absorbing`` (masked diffusion: a commit is final) or ``uniform`` (undecided
            positions hold tokens re-decided every step until their block ends); see
            :mod:`dllm_strategies.uniform`.  The model says which (``model.process``).
        aligned_blocks: blocks are counted from each row's first prompt token (a block-causal
            model's attention blocks: the first response block of a row is short when its prompt
            does not fill its last block) instead of from the first response column.
    """

    gen_length: int = 64
    block_length: int = 32
    steps: int | None = None
    mask_id: int = attrs.field(default=-1, kw_only=True)
    fill_id: int = attrs.field(default=-1, kw_only=True)
    eot_ids: tuple[int, ...] = attrs.field(default=(), converter=tuple, kw_only=True)
    seed: int = attrs.field(default=0, kw_only=True)
    max_steps: int | None = attrs.field(default=None, kw_only=True)
    trace: bool = attrs.field(default=False, kw_only=True)
    process: str = attrs.field(default="absorbing", kw_only=True)
    aligned_blocks: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.process not in ("absorbing", "uniform"):
            raise ConfigError(f"process must be 'absorbing' or 'uniform', got {self.process!r}")
        check_lengths(self.gen_length, self.block_length, self.steps)
        if self.steps is None:
            object.__setattr__(self, "steps", self.gen_length)
        if self.max_steps is None:
            bound = 4 * self.gen_length
            object.__setattr__(self, "max_steps", max(bound, self.steps) if self.process == "uniform" else bound)
        _positive("max_steps", self.max_steps)
        if self.mask_id < 0:
            raise ConfigError("mask_id is missing: the model or tokenizer must define a mask token")

    @classmethod
    def for_model(cls, model: Any, **settings: Any) -> DecodeConfig:
        """The config of a run of ``model``: its mask, fill and end-of-text ids, plus ``settings``
        (``gen_length``, ``block_length``, ``steps``, ``seed``...).  The model's diffusion process
        (``model.process``, default absorbing) unless ``settings`` give one.  A model's own block
        (``model.block_length``: a block-causal model's attention block) is the default block
        length; a model whose block is fixed (``model.block_fixed``: DiffusionGemma's canvas)
        decodes blocks of exactly that width, ``model.steps_per_block`` steps each unless ``steps``
        is given."""
        settings.setdefault("process", getattr(model, "process", "absorbing"))
        settings.setdefault("aligned_blocks", bool(getattr(model, "aligned_blocks", False)))
        width = getattr(model, "block_length", None)
        if width is not None and settings.get("block_length") is None:
            settings["block_length"] = width
        if width is not None and getattr(model, "block_fixed", False):
            name = repr(getattr(model, "name", "") or type(model).__name__)
            gen_length = settings.get("gen_length", cls.gen_length)
            if settings["block_length"] != width:
                raise ConfigError(f"model {name} decodes blocks of {width} tokens; use block_length={width} "
                                  "(or leave it unset)")
            if gen_length % width:
                raise ConfigError(f"gen_length={gen_length} is not a whole number of {width}-token blocks for model "
                                  f"{name}; use gen_length={-(-gen_length // width) * width}")
            per_block = getattr(model, "steps_per_block", None)
            if settings.get("steps") is None and per_block is not None:
                settings["steps"] = per_block * (gen_length // width)
        return cls(mask_id=model.mask_id, fill_id=model.fill_id, eot_ids=tuple(model.eot_ids), **settings)

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


def check_lengths(gen_length: int, block_length: int | None = None, steps: int | None = None) -> None:
    """Raise :class:`ConfigError` naming the fix unless ``gen_length``, ``block_length`` (None: one
    block of ``gen_length``) and ``steps`` (None: ``gen_length``) make a valid run: what
    :class:`DecodeConfig` checks, for commands that check their lengths before loading a model.
    0 is an error, never "the default"."""
    _positive("gen_length", gen_length)
    block_length = gen_length if block_length is None else block_length
    _positive("block_length", block_length)
    if gen_length % block_length:
        raise ConfigError(
            f"gen_length={gen_length} is not a multiple of block_length={block_length}; "
            f"use a block_length that divides it (e.g. {_divisor_near(gen_length, block_length)})"
        )
    steps = gen_length if steps is None else steps
    _positive("steps", steps)
    blocks = gen_length // block_length
    if steps % blocks:
        raise ConfigError(
            f"steps={steps} is not divisible by the number of blocks "
            f"{blocks} (= gen_length {gen_length} / block_length {block_length}); "
            f"use a multiple of {blocks}, e.g. {blocks * max(1, round(steps / blocks))}"
        )


def _divisor_near(n: int, k: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - k), d))


@attrs.frozen
class DecodeState:
    """Where one run stands.  Rows are the running (unfinished) rows of this step (``rows`` are their
    indices in the whole batch, for plugins that keep per-row state of their own).

    Attributes:
        config: the run's :class:`DecodeConfig`.
        prompt: (B, P) left-padded prompt ids; never changes.
        prompt_mask: (B, P) bool, False on left padding.
        response: (B, G) response ids; ``config.mask_id`` where still masked.
        live_length: (B,) response positions still in the model's input (cut ones are filled).
        finished: (B,) bool.
        step: steps taken so far (0 before the first).
        nfe: (B,) forward passes each row took part in.
        block_nfe: (B, num_blocks) of those, the ones spent while each block (of
            ``config.block_length`` columns) held the row's open window.
        taken: (B,) steps each row has taken (a finished row stops counting).
        window_start / window_steps: (B,) the window (block) start of the last plan and how
            many consecutive steps used it: the step index inside the current block.
        commit_step: (B, G) the step at which each position got its current token (-1: not yet).
        rows: (B,) indices of these rows in the whole batch.
        reference: (B, G) reference response for oracles, or None.
        extras: free per-run values the caller passes to plugins (read-only mapping).
        rng: the run's random stream (:class:`~dllm_strategies.noise.RandomStream`, seeded with
            ``config.seed``, drawn for the whole batch): the uniform process's noise and the
            plugins that must interleave with it (``multinomial``, ``renoise``) draw from it.
        columns: (G,) the response column indices 0..G-1 (made once per run, carried along).
    """

    config: DecodeConfig
    prompt: torch.Tensor = _tensor
    prompt_mask: torch.Tensor = _tensor
    response: torch.Tensor = _tensor
    live_length: torch.Tensor = _tensor
    finished: torch.Tensor = _tensor
    nfe: torch.Tensor = _tensor
    block_nfe: torch.Tensor = _tensor
    taken: torch.Tensor = _tensor
    window_start: torch.Tensor = _tensor
    window_steps: torch.Tensor = _tensor
    commit_step: torch.Tensor = _tensor
    rows: torch.Tensor = _tensor
    step: int = 0
    reference: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False)
    extras: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    rng: RandomStream | None = attrs.field(default=None, eq=False, repr=False)
    columns: torch.Tensor = attrs.field(
        default=attrs.Factory(lambda self: torch.arange(self.config.gen_length, device=self.response.device),
                              takes_self=True), eq=False, repr=False)
    # derived views computed so far (live, masked, the last steps_in_window answer): see evolve()
    _views: dict = attrs.field(init=False, factory=dict, eq=False, repr=False)

    @classmethod
    def start(cls, prompt: torch.Tensor, prompt_mask: torch.Tensor, config: DecodeConfig,
              reference: torch.Tensor | None = None, extras: dict[str, Any] | None = None) -> DecodeState:
        B, device = prompt.shape[0], prompt.device
        G = config.gen_length
        zeros = torch.zeros(B, dtype=torch.long, device=device)
        if reference is not None and reference.shape != (B, G):
            raise ConfigError(f"reference must have shape ({B}, {G}) (batch, gen_length), got {tuple(reference.shape)}")
        return cls(
            config=config, prompt=prompt, prompt_mask=prompt_mask.bool(),
            response=torch.full((B, G), config.mask_id, dtype=torch.long, device=device),
            live_length=torch.full((B,), G, dtype=torch.long, device=device),
            finished=torch.zeros(B, dtype=torch.bool, device=device),
            nfe=zeros, block_nfe=torch.zeros(B, config.num_blocks, dtype=torch.long, device=device),
            taken=zeros, window_start=torch.full((B,), -1, dtype=torch.long, device=device),
            window_steps=zeros, commit_step=torch.full((B, G), -1, dtype=torch.long, device=device),
            rows=torch.arange(B, device=device), step=0, reference=reference, extras=dict(extras or {}),
            rng=RandomStream.seeded(config.seed, B, device),
        )

    # ---- derived views -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.response.shape[0]

    @property
    def device(self) -> torch.device:
        return self.response.device

    @property
    def live(self) -> torch.Tensor:
        """(B, G) bool: positions still in the model's input (computed once; read-only)."""
        views = self._views
        if "live" not in views:
            views["live"] = self.columns[None, :] < self.live_length[:, None]
        return views["live"]

    @property
    def masked(self) -> torch.Tensor:
        """(B, G) bool: positions still to decide: the mask token (absorbing process), or any
        live position whose block has not ended (uniform process: it holds noise or a token
        accepted for now).  Computed once; read-only."""
        views = self._views
        if "masked" not in views:
            if self.config.process == "uniform":
                views["masked"] = self.live & (self.commit_step < 0)
            else:
                views["masked"] = self.response == self.config.mask_id
        return views["masked"]

    def evolve(self, **changes: Any) -> DecodeState:
        """``attrs.evolve(self, **changes)`` that keeps the derived views the changes cannot
        affect (``live`` unless ``live_length`` changes; ``masked`` unless ``live_length`` or
        what it reads does: ``response`` under the absorbing process, ``commit_step`` under the
        uniform one): a step makes several states, and recomputing the views for each was a
        visible part of a small model's step."""
        new = _evolve(self, changes)
        views = self._views
        if "live" in views and not changes.keys() & {"live_length", "columns", "config"}:
            new._views["live"] = views["live"]
            # under the uniform process a token is undecided by its commit step alone
            reads = "commit_step" if self.config.process == "uniform" else "response"
            if "masked" in views and reads not in changes:
                new._views["masked"] = views["masked"]
                if "of_masked" in views:  # functions of masked alone stay valid with it
                    new._views["of_masked"] = views["of_masked"]
        return new

    def of_masked(self, compute: Callable[[DecodeState], Any]) -> Any:
        """``compute(self)`` for a function of the undecided positions alone (``masked``, read with
        the config and ``columns``), computed once and shared by the states that follow while they
        leave ``masked`` as it is: under the uniform process, every step of a block.  The schedule's
        choice of block is one.  Treat the result as read-only."""
        memo = self._views.setdefault("of_masked", {})
        if compute not in memo:
            memo[compute] = compute(self)
        return memo[compute]

    def steps_in_window(self, window_start: torch.Tensor) -> torch.Tensor:
        """(B,) steps already spent in the window starting at ``window_start`` (0 if new).  The
        schedule, the temperature and self-conditioning all ask with the plan's window start in
        one step: it is computed once (read-only)."""
        asked = self._views.get("steps")
        if asked is not None and asked[0] is window_start:
            return asked[1]
        if window_start is self.window_start:  # the window of the last step, as the same tensor
            steps = self.window_steps
        else:
            steps = torch.where(window_start == self.window_start, self.window_steps, 0)
        self._views["steps"] = (window_start, steps)
        return steps

    def sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input: (B, P + G) ids and attention mask (padding and cut positions off)."""
        return torch.cat([self.prompt, self.response], 1), torch.cat([self.prompt_mask, self.live], 1)

    # ---- row selection -------------------------------------------------------------------
    def take(self, index: torch.Tensor) -> DecodeState:
        """The sub-state of rows ``index`` (positions in this state)."""
        pick = {name: getattr(self, name).index_select(0, index) for name in _ROW_FIELDS}
        if self.reference is not None:
            pick["reference"] = self.reference.index_select(0, index)
        return _evolve(self, pick)

    def put(self, index: torch.Tensor, part: DecodeState) -> DecodeState:
        """This state with rows ``index`` replaced by ``part`` (and ``part``'s step)."""
        merged = {}
        for name in _ROW_FIELDS:
            whole = getattr(self, name).clone()
            whole[index] = getattr(part, name)
            merged[name] = whole
        return _evolve(self, {**merged, "step": part.step})


def _evolve(value: Any, changes: dict[str, Any]) -> Any:
    """``attrs.evolve(value, **changes)`` at a third of the cost (a step makes several states):
    fields are copied as they are, which is what attrs does for a class without validators,
    converters or a post-init hook; any other class goes through ``attrs.evolve``."""
    cls = type(value)
    plan = _EVOLVE_PLANS.get(cls)
    if plan is None:
        fields = attrs.fields(cls)
        plain = not hasattr(cls, "__attrs_post_init__") and all(
            f.validator is None and f.converter is None for f in fields)
        kept = tuple(f.name for f in fields if f.init)
        fresh = tuple((f.name, f.default.factory) for f in fields
                      if not f.init and isinstance(f.default, attrs.Factory) and not f.default.takes_self)
        plan = _EVOLVE_PLANS[cls] = (plain and len(kept) + len(fresh) == len(fields), kept, frozenset(kept), fresh)
    plain, kept, known, fresh = plan
    if not plain:
        return attrs.evolve(value, **changes)
    if not changes.keys() <= known:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(changes.keys() - known))}")
    new = object.__new__(cls)
    for name in kept:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(value, name))
    for name, factory in fresh:
        object.__setattr__(new, name, factory())
    return new


_EVOLVE_PLANS: dict[type, tuple] = {}


class SameTensors:
    """A one-entry memo keyed by the identity of a few tensors: ``get(keys, compute)`` hands back
    the value computed for the last keys while it is asked about the very same tensor objects.

    The loop's tensors are read-only values, and a schedule that keeps its window hands back the
    same window tensors at every step of a block, so whatever is derived from the window alone
    (its columns, the bounds the core checks, its block index) is computed once per block.  The
    memo holds its keys, so an identity it compares is never reused by another tensor; one entry
    is replaced as a whole, so concurrent runs only miss, never mix."""

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: tuple = ((), None)

    def get(self, keys: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        held, value = self._entry
        if len(held) == len(keys) and all(a is b for a, b in zip(held, keys)):
            return value
        value = compute()
        self._entry = (keys, value)
        return value


_WINDOW_COLUMNS = SameTensors()

_ROW_FIELDS = ("prompt", "prompt_mask", "response", "live_length", "finished", "nfe", "block_nfe", "taken",
               "window_start", "window_steps", "commit_step", "rows")


@attrs.frozen
class Plan:
    """What the schedule opens this step.

    Attributes:
        window_start / window_end: (B,) response columns [start, end) of the open window
            (the current block).
        budget: (B,) how many positions the schedule asks to commit (>= 1; 0 only from a
            schedule declaring ``empty_steps``, before the row's last declared step).
    """

    window_start: torch.Tensor = _tensor
    window_end: torch.Tensor = _tensor
    budget: torch.Tensor = _tensor
    # the last state window() was asked for with its answer: every hook of a step asks for the
    # same, and a step makes several states
    _last_window: list = attrs.field(init=False, factory=list, eq=False, repr=False)

    def inside(self, columns: torch.Tensor) -> torch.Tensor:
        """(B, G) bool: the columns of each row's window, masked or not (``columns``: the state's
        ``columns``).  Computed once per window: the plans of a schedule that hands back the same
        window tensors share it.  Treat it as read-only."""
        start, end = self.window_start, self.window_end
        return _WINDOW_COLUMNS.get((start, end, columns),
                                   lambda: (columns[None, :] >= start[:, None]) & (columns[None, :] < end[:, None]))

    def window(self, state: DecodeState) -> torch.Tensor:
        """(B, G) bool: masked positions inside the window (computed once per state: treat it as
        read-only)."""
        if self._last_window and self._last_window[0] is state:
            return self._last_window[1]
        window = self.inside(state.columns) & state.masked
        self._last_window[:] = [state, window]
        return window


@attrs.frozen
class Logits:
    """Model output for response columns [start, start + W): ``values`` (B, W, V).

    ``cover`` (B, W) bool, when given, says which of those entries a row really has: a forward
    that computes different columns for different rows (a KV cache whose rows are in different
    blocks) marks the others absent, so every row sees exactly the columns it would see decoded
    alone.  None: every row has every column."""

    values: torch.Tensor = _tensor
    start: int = 0
    cover: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False)
    # what derived() and reach() computed from these logits (a new Logits starts empty)
    _derived: dict = attrs.field(init=False, factory=dict, eq=False, repr=False)

    @property
    def stop(self) -> int:
        return self.start + self.values.shape[1]

    def derived(self, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``compute(values)``, computed once for these logits and shared by every hook that asks
        with the same function: an acceptance rule and a stop rule that both read the entropy of
        the step's logits pay for it once.  ``compute`` must depend on ``values`` alone; treat the
        result as read-only."""
        if compute not in self._derived:
            self._derived[compute] = compute(self.values)
        return self._derived[compute]

    @property
    def probabilities(self) -> torch.Tensor:
        """(B, W, V) ``softmax(values)`` in the values' dtype, computed once (the core's confidence
        and a sampler read the same; treat it as read-only)."""
        return self.derived(ops.softmax)

    def span(self, gen_length: int, device: torch.device) -> torch.Tensor:
        """(G,) bool: response columns these logits cover (for some row; see :meth:`reach`).
        Shared by every Logits with the same columns: treat it as read-only."""
        return _span(self.start, self.stop, gen_length, torch.device(device))

    def reach(self, gen_length: int, device: torch.device) -> torch.Tensor:
        """(B, G) bool: the response columns each row's logits cover (computed once; read-only)."""
        key = ("reach", gen_length, device)
        if key not in self._derived:
            span = self.span(gen_length, device)[None, :].expand(self.values.shape[0], -1)
            self._derived[key] = span if self.cover is None else self.widen(self.cover, False, gen_length)
        return self._derived[key]

    def widen(self, values: torch.Tensor, fill: float | int, gen_length: int) -> torch.Tensor:
        """Place per-position ``values`` (B, W, ...) into a (B, G, ...) tensor filled with ``fill``
        where the logits do not reach (``values`` itself when they reach the whole response)."""
        if self.cover is not None:
            cover = self.cover.reshape(*self.cover.shape, *([1] * (values.dim() - 2)))
            values = torch.where(cover, values, torch.as_tensor(fill, dtype=values.dtype, device=values.device))
        if self.start == 0 and values.shape[1] == gen_length:
            return values
        # one padding op, not a fill then a copy: a step widens several tensors
        after = gen_length - self.start - values.shape[1]
        return torch.constant_pad_nd(values, (0, 0) * (values.dim() - 2) + (self.start, after), fill)


@functools.lru_cache(maxsize=64)
def _span(start: int, stop: int, gen_length: int, device: torch.device) -> torch.Tensor:
    # a run asks for the same few spans (one per block) at every step
    cols = torch.arange(gen_length, device=device)
    return (cols >= start) & (cols < stop)


@attrs.frozen
class Proposal:
    """The step's candidates, over the whole response (B, G).

    Attributes:
        tokens: candidate token per position (``mask_id`` where the logits do not reach).
        confidence: softmax probability of the candidate (0 where the logits do not reach).
        scores: ranking key, higher first (-inf on positions that are not masked or not reached).
        logits: the :class:`Logits` they came from (for plugins that need whole distributions).
    """

    tokens: torch.Tensor = _tensor
    confidence: torch.Tensor = _tensor
    scores: torch.Tensor = _tensor
    logits: Logits = _tensor


@attrs.frozen
class Commit:
    """A remasking decision.

    Attributes:
        mask: (B, G) bool, masked positions to fill now.
        tokens: (B, G) values to write, or None for the proposal's tokens.
        revoke: (B, G) bool, committed positions to mask again (revocable plugins only,
            inside the current window), or None.
    """

    mask: torch.Tensor = _tensor
    tokens: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False)
    revoke: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class DecodeResult:
    """What a decode run returns.

    Attributes:
        tokens: (B, G) response ids (cut positions hold the fill token).
        text: decoded text per row, cut at the first end-of-text/end-of-turn token.
        answer_length: (B,) response tokens before that token (docs/metrics.md's answer tokens,
            before any stop-sequence cut).
        steps: (B,) steps each row took.
        nfe: (B,) forward passes each row took part in.
        block_nfe: (B, num_blocks) the part of ``nfe`` spent while each block of
            ``block_length`` columns held the row's open window (the answer / tail split of
            docs/metrics.md is read from it).
        forwards: model calls in the whole run (a batch forward counts once).
        positions: token positions the model processed in the whole run (cost of the calls).
        encoder_forwards: encoder passes in the whole run, counted apart from ``forwards`` and NFE:
            a block-autoregressive model's passes that write finished blocks into its exact
            cache (DiffusionGemma's encoder, a block-causal model's cache writes).
        commit_step: (B, G) the step each position got its final token (-1: filled by a cut).
        forced: (B,) commits the core had to add because the strategy committed nothing.
        wall_time: seconds.
        trace: (S, B, G) response after every step when ``config.trace``, else None.
    """

    tokens: torch.Tensor = _tensor
    text: list[str] = attrs.field(factory=list)
    answer_length: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False)
    steps: torch.Tensor = _tensor
    nfe: torch.Tensor = _tensor
    block_nfe: torch.Tensor = _tensor
    forwards: int = 0
    positions: int = 0
    encoder_forwards: int = 0
    commit_step: torch.Tensor = _tensor
    forced: torch.Tensor = _tensor
    wall_time: float = 0.0
    trace: torch.Tensor | None = _tensor

    @property
    def tokens_per_step(self) -> list[list[int]]:
        """Per row, how many positions were committed at each of its steps."""
        out = []
        for row, steps in zip(self.commit_step.tolist(), self.steps.tolist(), strict=True):
            counts = [0] * steps
            for s in row:
                if 0 <= s < steps:
                    counts[s] += 1
            out.append(counts)
        return out
