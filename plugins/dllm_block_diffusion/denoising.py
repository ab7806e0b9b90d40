"""DiffusionGemma's denoising rules, as ``model.generate()`` of transformers 5.24 applies them
(``generation_diffusion_gemma.py``): the linear temperature schedule, multinomial sampling,
the entropy-bound acceptance, re-noising, the stable-and-confident stop and self-conditioning.
Each is one plugin, so any can be swapped (``threshold`` instead of ``entropy_bound``...).

The arithmetic is ``generate``'s, operation for operation (float32 temperatures computed from an
int32 step, ``torch.distributions.Categorical`` entropies, ``torch.sort`` order), and every draw
comes from the run's stream for the whole batch (:mod:`dllm_strategies.noise`), multinomial
first, then the re-noising ``randint``: a seeded run reproduces ``generate`` token for token.
"""

from __future__ import annotations

import attrs
import torch

from dllm_strategies import Commit, Logits, Plugin, hookimpl

_positive = [attrs.validators.gt(0.0)]


def _count(minimum: int) -> list:
    return [attrs.validators.instance_of(int), attrs.validators.ge(minimum)]


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` exactly as ``torch.distributions.Categorical(logits=...)
    .entropy()`` computes it (what ``generate`` thresholds), in the logits' dtype: the same
    operations in the same order, so the same bits, without building (and validating) a
    distribution object twice a step."""
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = torch.softmax(normalized, dim=-1)
    return -(normalized.clamp(min=torch.finfo(normalized.dtype).min) * probs).sum(-1)


class TemperatureSchedule(Plugin):
    """DiffusionGemma's linear temperature schedule: at a block's step with ``n`` steps left
    (``n = N, ..., 1`` for ``N = steps_per_block``) the logits are divided by
    ``t_min + (t_max - t_min) * n / N``, so the first step is the hottest (a block that takes more
    than N steps, possible under the absorbing process, stays at n = 1).  Everything downstream
    (sampling, acceptance, the stop rule, self-conditioning) sees the tempered logits, as in
    ``generate``.  Wraps ``dllm_forward``.

    Options:
        t_max: the first step's temperature (0.8, transformers' default).
        t_min: the temperature the schedule ends at (0.4).
    """

    processes = ("absorbing", "uniform")

    @attrs.frozen
    class Options:
        t_max: float = attrs.field(default=0.8, validator=_positive)
        t_min: float = attrs.field(default=0.4, validator=_positive)

        def __attrs_post_init__(self) -> None:
            if self.t_max <= self.t_min:
                raise ValueError(f"t_max ({self.t_max}) must exceed t_min ({self.t_min})")

    @hookimpl
    def dllm_start(self, state) -> None:
        # the temperature of each step of a block, n = N .. 1, with generate's arithmetic
        # (float32 from an int32 count); a step past the N-th stays at n = 1
        N = state.config.steps_per_block
        left = torch.arange(N, 0, -1, dtype=torch.int32, device=state.device)
        table = self.options.t_min + (self.options.t_max - self.options.t_min) * (left / N)
        self.divisors = table[:, None, None]  # (N, 1, 1): a row's divisor for its (B, W, V) logits

    def step_index(self, state, plan) -> torch.Tensor:
        """(B,) each row's place in the table (float32 temperatures computed as ``generate`` does)."""
        return state.steps_in_window(plan.window_start).clamp(max=self.divisors.shape[0] - 1)

    @hookimpl(wrapper=True)
    def dllm_forward(self, model, state, plan):
        logits = yield
        t = self.divisors[self.step_index(state, plan)]
        return Logits(values=logits.values / t.to(logits.values.device), start=logits.start, cover=logits.cover)


class Multinomial(Plugin):
    """Sample every position from the softmax of its logits (float32, ``torch.multinomial``),
    as ``generate`` samples its denoiser canvas; the draw comes from the run's stream, for the
    whole batch.  Never the mask token of an absorbing model."""

    stochastic = True
    processes = ("absorbing", "uniform")

    @hookimpl
    def dllm_sample(self, state, logits: Logits) -> torch.Tensor:
        values = logits.values
        mask_id = state.config.mask_id
        if state.config.process == "absorbing" and mask_id < values.shape[-1]:
            # the mask's logit, not its probability, is removed: a model sure of the mask (every
            # other probability rounding to 0) still gives a distribution over the rest
            probs = torch.softmax(values.index_fill(-1, torch.tensor([mask_id], device=values.device), float("-inf")),
                                  dim=-1, dtype=torch.float32)
        elif values.dtype == torch.float32:
            probs = logits.probabilities  # the softmax the core's confidence reads too
        else:
            probs = torch.softmax(values, dim=-1, dtype=torch.float32)
        return state.rng.multinomial(probs, state.rows)


class EntropyBound(Plugin):
    """DiffusionGemma's acceptance (the EB-Sampler inequality): sort the window's undecided
    positions by entropy, lowest first, and accept the longest prefix whose entropies sum, minus
    the largest of them, to at most ``bound``: always at least one.  Under the uniform process the
    rest of the block is re-decided next step (``renoise`` re-noises it).  The rule of
    ``eb_sampler``, with ``generate``'s arithmetic (Categorical entropies, ``torch.sort``) so its
    ties and roundings decide as ``generate``'s do.

    Options:
        bound: the entropy bound in nats (0.1, transformers' default).
    """

    processes = ("absorbing", "uniform")

    @attrs.frozen
    class Options:
        bound: float = attrs.field(default=0.1, validator=_positive)

    @hookimpl
    def dllm_remask(self, state, proposal, plan) -> torch.Tensor:
        logits = proposal.logits
        # over the logits' own columns, as generate sorts its canvas: the same ties, fewer entries
        window = plan.window(state)[:, logits.start:logits.stop]
        if logits.cover is not None:
            window = window & logits.cover
        entropy = torch.where(window, logits.derived(categorical_entropy), float("inf"))
        ordered, order = torch.sort(entropy, dim=-1)
        # the window's positions sort first; from the first +inf (outside the window) on, the sum
        # minus the largest is inf - inf = NaN, which no bound admits
        spent = torch.cumsum(ordered, dim=-1) - ordered
        keep = spent <= self.options.bound
        return logits.widen(torch.zeros_like(keep).scatter(-1, order, keep), False, state.config.gen_length)


class Renoise(Plugin):
    """Re-noising (uniform process): every position of the window the acceptance rule did not
    accept takes a fresh uniformly random token (one ``randint`` over the whole batch from the
    run's stream, after the sample's draw, as ``generate`` re-noises).  Without it a position
    that is not accepted keeps its token.  Wraps ``dllm_remask``, so it follows any acceptance
    rule."""

    stochastic = True
    processes = ("uniform",)

    @hookimpl
    def dllm_start(self) -> None:
        self.layout: tuple = ()  # (window start, window end, width, offsets) of the last step

    def window_layout(self, state, plan) -> tuple[int, torch.Tensor]:
        """The noise draw's width (the widest window) and each response column's offset in it;
        the same while the schedule keeps its window (as the same tensors)."""
        layout = self.layout
        if layout and layout[0] is plan.window_start and layout[1] is plan.window_end:
            return layout[2], layout[3]
        width = int((plan.window_end - plan.window_start).max())
        offset = (state.columns[None, :] - plan.window_start[:, None]).clamp(0, width - 1)
        self.layout = (plan.window_start, plan.window_end, width, offset)
        return width, offset

    @hookimpl(wrapper=True)
    def dllm_remask(self, state, proposal, plan):
        result = yield
        commit = result if isinstance(result, Commit) else Commit(mask=result)
        window = plan.window(state)
        width, offset = self.window_layout(state, plan)
        noise = state.rng.randint(proposal.logits.values.shape[-1], width, state.rows)
        base = commit.tokens if commit.tokens is not None else proposal.tokens
        tokens = torch.where(window > commit.mask, noise.gather(1, offset), base)  # in the window, not accepted
        return Commit(mask=commit.mask, tokens=tokens, revoke=commit.revoke)


class StableStop(Plugin):
    """DiffusionGemma's stop rule (uniform process): a row's block ends once its argmax canvas
    (the argmax of the step's logits over the block) equals the previous ``stability`` ones and
    the mean entropy of those logits over the block is below ``confidence``.  The block then
    holds that argmax.  The history starts afresh at every block.

    Options:
        stability: steps the argmax must repeat (1; 0: confidence alone decides).
        confidence: bound on the block's mean entropy in nats (0.005).
    """

    processes = ("uniform",)

    @attrs.frozen
    class Options:
        stability: int = attrs.field(default=1, validator=_count(0))
        confidence: float = attrs.field(default=0.005, validator=_positive)

    @hookimpl
    def dllm_start(self, state) -> None:
        self.batch_size = state.batch_size
        self.history: torch.Tensor | None = None  # (batch, stability, block width) argmax canvases

    @hookimpl
    def dllm_should_stop(self, state, proposal) -> torch.Tensor:
        values = proposal.logits.values
        argmax = torch.argmax(values, dim=-1)
        confident = torch.mean(proposal.logits.derived(categorical_entropy), dim=-1) < self.options.confidence
        S = self.options.stability
        if S == 0:
            return confident
        rows, W = state.rows, argmax.shape[1]
        if self.history is None or self.history.shape[2] != W:
            self.history = torch.full((self.batch_size, S, W), -1, dtype=argmax.dtype, device=argmax.device)
        whole = state.batch_size == self.batch_size
        history = self.history if whole else self.history.index_select(0, rows)
        fresh = state.window_steps == 1  # the block's first step: its history starts empty
        if S > 1:
            history = history.masked_fill(fresh[:, None, None], -1)
        stable = (history == argmax[:, None, :]).flatten(1).all(1) > fresh  # and not fresh
        latest = argmax[:, None, :] if S == 1 else torch.cat([history[:, 1:], argmax[:, None, :]], 1)
        if whole:
            self.history = latest
        else:
            self.history[rows] = latest
        return stable & confident


class SelfConditioning(Plugin):
    """DiffusionGemma's self-conditioning: each decoder pass reads the previous step's logits of
    its block (tempered, as ``generate`` feeds them), none at a block's first step.  Owns
    ``dllm_forward`` and runs the model's exact cache (:mod:`dllm_strategies.blocks`); without it
    every pass gets a zero self-conditioning signal."""

    processes = ("uniform",)
    supports_fake_models = False

    @hookimpl
    def dllm_start(self, state, model) -> None:
        factory = getattr(model, "exact_cache", None)
        if factory is None:
            raise TypeError(f"self_conditioning needs a DiffusionGemma model (its decoder reads the previous "
                            f"step's logits); model {getattr(model, 'name', '') or type(model).__name__!r} has none")
        self.cache = factory(state)
        self.dtype = model.dtype
        self.previous: torch.Tensor | None = None  # (batch, block width, vocab): the last step's logits

    @hookimpl
    def dllm_forward(self, model, state, plan) -> Logits:
        steps = state.steps_in_window(plan.window_start)
        # rows at their block's first step (one transfer); none when the plan keeps the last
        # step's window, whose step count (window_steps) includes that step
        first = None if steps is state.window_steps and state.step > 0 else steps == 0
        starting = 0 if first is None else int(first.sum())
        if starting == state.batch_size or self.previous is None:
            return self.cache.logits(model, state, plan)
        whole = state.batch_size == self.previous.shape[0]
        previous = self.previous if whole else self.previous.index_select(0, state.rows)
        mask = None if starting == 0 else ~first
        return self.cache.logits(model, state, plan, self_conditioning_logits=previous,
                                 self_conditioning_mask=mask)

    @hookimpl
    def dllm_after_step(self, state, proposal) -> None:
        values = proposal.logits.values.to(self.dtype)
        if state.batch_size == self.cache.batch_size:  # every row stepped: keep this step's tensor itself
            self.previous = values
            return
        if self.previous is None or self.previous.shape[1:] != values.shape[1:]:
            self.previous = values.new_zeros(self.cache.batch_size, *values.shape[1:])
        self.previous = self.previous.index_copy(0, state.rows, values)  # a new tensor: steps keep theirs
