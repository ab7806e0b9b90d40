"""The decoder's promises, checked on any strategy.

Three lines for a plugin author::

    from dllm_strategies.testing import check_strategy_property

    def test_my_strategy():
        check_strategy_property("my_plugin(option=1)+margin")

Per step (on every :class:`~dllm_strategies.decode.StepRecord`): the prompt never changes; a
committed token is never masked again or changed unless the remasking plugin is revocable;
every live row commits at least one token by the strategy's own choice (the core never had to
force progress; a schedule declaring ``empty_steps`` may plan none, never at a row's last
declared step); a live length never grows; with the core's top-k remasking, each step commits
exactly ``min(budget, masked in window)``, so the schedule's budgets add up to the gen length.
Per run: no mask token is left; every row ends within ``gen_length`` steps (non-revocable; with
``empty_steps``, within ``max(gen_length, steps)``: an empty step is paid by the declared steps);
cost counters equal what the model was called with; the same seed gives the same output; and
a strategy none of whose plugins declares ``stochastic = True`` (or ``batch_invariant = False``)
decodes a batch exactly as it decodes each row alone: the same tokens, steps and NFE per row.
"""

from __future__ import annotations

import warnings
from typing import Any

import attrs
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dllm_strategies.decode import Run, StepRecord, decode, encode_prompts
from dllm_strategies.models.tiny import tiny_model
from dllm_strategies.strategy import RunPlugins, Strategy, build_strategy
from dllm_strategies.state import DecodeConfig, DecodeResult, DecodeState
from dllm_strategies.testing.fakes import FakeModel, RecordingModel, ScriptedLogits
from dllm_strategies.testing.processes import UniformFakeModel, check_uniform_step, kit_diffusion_gemma, served


class InvariantViolation(AssertionError):
    """A strategy broke one of the decoder's promises; the message says which and where."""


# ------------------------------------------------------------------------------------------
# Hypothesis strategies
# ------------------------------------------------------------------------------------------
VOCAB = 24
MASK_ID, EOT_ID = 0, 1


@st.composite
def logit_tables(draw, vocab: int = VOCAB) -> torch.Tensor:
    """(vocab, vocab) tables behind a fake model: exact ties, near-uniform or extremely peaked."""
    kind = draw(st.sampled_from(["ties", "near_uniform", "peaked", "mixed"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        table = torch.randint(0, 3, (vocab, vocab), generator=g).double()
    elif kind == "near_uniform":
        table = 1e-6 * torch.randn(vocab, vocab, generator=g, dtype=torch.float64)
    elif kind == "peaked":
        table = 60.0 * torch.randn(vocab, vocab, generator=g, dtype=torch.float64)
    else:
        table = torch.randn(vocab, vocab, generator=g, dtype=torch.float64) * torch.rand(vocab, 1, generator=g,
                                                                                      dtype=torch.float64) * 10
    return table


def _table_logits(table: torch.Tensor):
    def logits(input_ids: torch.Tensor) -> torch.Tensor:
        left = torch.roll(input_ids, 1, dims=1)
        return table[input_ids] + 0.5 * table[left]

    return logits


@st.composite
def fake_models(draw, vocab: int = VOCAB, process: str = "absorbing") -> FakeModel:
    """A :class:`FakeModel` whose logits hypothesis draws (see :func:`logit_tables`); under the
    uniform ``process`` a :class:`~dllm_strategies.testing.processes.UniformFakeModel`."""
    cls = UniformFakeModel if process == "uniform" else FakeModel
    return cls(logits_fn=_table_logits(draw(logit_tables(vocab))), vocab_size=vocab, mask_id=MASK_ID,
               eot_ids=(EOT_ID,), fill_id=EOT_ID)


@st.composite
def decode_shapes(draw, block_lengths: tuple[int, ...] = (2, 4, 8), references: bool = False) -> dict[str, Any]:
    """Prompts (different lengths: left padding), gen length, block length and steps; with
    ``references``, also a reference response per row (ids 2..23) for oracle plugins."""
    block_length = draw(st.sampled_from(block_lengths))
    num_blocks = draw(st.integers(1, 3))
    steps_per_block = draw(st.integers(1, block_length))
    batch = draw(st.integers(1, 3))
    prompts = [draw(st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=5)) for _ in range(batch)]
    shape = {"prompts": prompts, "gen_length": block_length * num_blocks, "block_length": block_length,
             "steps": steps_per_block * num_blocks}
    if references:
        rows = st.lists(st.integers(2, VOCAB - 1), min_size=shape["gen_length"], max_size=shape["gen_length"])
        shape["reference"] = torch.tensor([draw(rows) for _ in range(batch)])
    return shape


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------
def _where(record: StepRecord, mask: torch.Tensor) -> str:
    row, col = mask.nonzero()[0].tolist()
    return f"row {int(record.rows[row])}, response position {col}, step {record.before.step}"


def check_step(strategy: RunPlugins, record: StepRecord, prompt: torch.Tensor) -> None:
    """Check one step; ``prompt`` is the whole batch's prompt as it was at the start."""
    before, after = record.before, record.after
    remasker = strategy.owners["dllm_remask"]
    revocable = bool(getattr(strategy.owner("dllm_remask"), "revocable", False))
    start = prompt.index_select(0, record.rows)
    for name, state in (("before", before), ("after", after)):
        if not torch.equal(state.prompt, start):
            changed = state.prompt != start
            row, col = changed.nonzero()[0].tolist()
            raise InvariantViolation(
                f"the prompt changed ({name} step {before.step}, row {int(record.rows[row])}, prompt position {col}) "
                f"with strategy {strategy.spec!r}: a plugin wrote into a state tensor; hooks must return new "
                "tensors and never modify state in place"
            )
    if bool((after.live_length > before.live_length).any()):
        raise InvariantViolation(f"a live length grew at step {before.step} with strategy {strategy.spec!r}")
    committed = ~before.masked & after.live
    remasked = committed & after.masked
    if not revocable and bool(remasked.any()):
        raise InvariantViolation(f"plugin {remasker!r} re-masked a committed token ({_where(record, remasked)}) "
                                 "but is not revocable")
    changed = committed & ~after.masked & (after.response != before.response)
    if bool(changed.any()):
        raise InvariantViolation(f"a committed token changed ({_where(record, changed)}) with strategy "
                                 f"{strategy.spec!r}")
    if bool((record.forced > 0).any()):
        row = int(record.rows[(record.forced > 0).nonzero()[0, 0]])
        raise InvariantViolation(
            f"plugin {remasker!r} committed nothing in live row {row} at step {before.step}; the core had to force "
            "progress. A strategy must commit at least one masked position per live row per step"
        )
    newly = record.commit.mask.sum(1)
    empty = record.plan.budget == 0
    if bool(empty.any()) and (not _empty_steps(strategy) or
                              bool((empty & (before.taken >= before.config.steps - 1)).any())):
        raise InvariantViolation(f"the schedule of {strategy.spec!r} planned an empty step at step {before.step} "
                                 "without declaring empty_steps, or at a row's last declared step")
    if bool(((newly < 1) & ~empty).any()):
        raise InvariantViolation(f"a live row committed nothing at step {before.step} with {strategy.spec!r}")
    shrank = bool(after.live_length.lt(before.live_length).any())
    if remasker == "core" and not _remask_wrapped(strategy) and not shrank and \
            not bool((after.finished & after.masked.any(1)).any()):
        window = record.plan.window(before).sum(1)
        expected = torch.where(empty, 0, torch.minimum(record.plan.budget, window).clamp(min=1))
        if not torch.equal(newly, expected):
            raise InvariantViolation(
                f"step {before.step} committed {newly.tolist()} positions but the schedule of {strategy.spec!r} "
                f"asked for {expected.tolist()} (budget {record.plan.budget.tolist()}, masked in window "
                f"{window.tolist()})"
            )
    if before.config.process == "uniform":
        check_uniform_step(strategy.spec, record, InvariantViolation)


def check_result(strategy: RunPlugins, result: DecodeResult, model: RecordingModel, config: DecodeConfig) -> None:
    if bool((result.tokens == config.mask_id).any()):
        raise InvariantViolation(f"the output of {strategy.spec!r} still holds the mask token")
    revocable = bool(getattr(strategy.owner("dllm_remask"), "revocable", False))
    limit = max(config.gen_length, config.steps) if _empty_steps(strategy) else config.gen_length
    if config.process == "uniform":  # every block takes at most steps_per_block steps
        limit = config.steps
    if not revocable and bool((result.steps > limit).any()):
        raise InvariantViolation(f"{strategy.spec!r} took {result.steps.tolist()} steps for gen_length "
                                 f"{config.gen_length} (at most {limit})")
    if result.forwards != len(model.calls):
        raise InvariantViolation(f"the result counts {result.forwards} forwards but the model was called "
                                 f"{len(model.calls)} times ({strategy.spec!r})")
    fed = sum(int(c.attention_mask.sum()) if c.attention_mask is not None and c.attention_mask.dim() == 2
              else c.input_ids.numel() for c in model.calls)  # a 4-D mask: every input position is processed
    if result.positions != fed:
        raise InvariantViolation(f"the result counts {result.positions} positions but the model processed {fed}")
    # each forward is charged to the rows that took part in it: none exceeds the forwards, none goes uncharged
    # (in lockstep a forward may serve only rows whose text is over: generate charges those to nobody)
    uncharged = int(result.nfe.sum()) < result.forwards and not getattr(model, "lockstep", False)
    if bool((result.nfe > result.forwards).any()) or uncharged:
        raise InvariantViolation(f"per-row NFE {result.nfe.tolist()} disagrees with {result.forwards} forwards")


def _remask_wrapped(strategy: Any) -> bool:
    """A plugin wraps dllm_remask (sub_blocks adds a block's first token): the core's top-k is
    then not the whole commit."""
    return any(i.wrapper or i.hookwrapper for i in strategy.pm.hook.dllm_remask.get_hookimpls())


def _empty_steps(strategy: Any) -> bool:
    return bool(getattr(strategy.owner("dllm_schedule"), "empty_steps", False))


def _fresh(model: Any) -> RecordingModel:
    """The model with a new, empty record of its calls."""
    return RecordingModel(model.model if isinstance(model, RecordingModel) else model)


@attrs.frozen
class CheckedRun:
    """A decode run that passed every check, with what it did at each step.

    Attributes:
        strategy: the run's strategy.
        records: one :class:`~dllm_strategies.decode.StepRecord` per step.
        result: the run's result.
        state: the whole batch's final state (``state.config``, ``state.live_length``...).
    """

    strategy: RunPlugins
    records: list[StepRecord]
    result: DecodeResult
    state: DecodeState


def checked_run(spec: Any, model: Any, prompts: list[list[int]], *, gen_length: int, block_length: int,
                steps: int | None = None, seed: int = 0, reference: torch.Tensor | None = None) -> CheckedRun:
    """Decode step by step with every per-step and per-run check (``reference``: (B, gen_length)
    for oracles), keeping the step records for checks of a plugin's own rule."""
    model = _fresh(model)
    strategy = build_strategy(spec)
    ids, mask = encode_prompts(model, prompts)
    config = DecodeConfig.for_model(model, gen_length=gen_length, block_length=block_length, steps=steps, seed=seed)
    state = DecodeState.start(ids, mask, config, reference=reference)
    prompt = state.prompt.clone()
    run = Run.begin(strategy, model, state)
    records = []
    while not run.done:
        records.append(run.step())
        check_step(strategy, records[-1], prompt)
    result = run.result()
    check_result(strategy, result, model, config)
    return CheckedRun(strategy=strategy, records=records, result=result, state=run.state)


def checked_decode(spec: Any, model: Any, prompts: list[list[int]], *, gen_length: int, block_length: int,
                   steps: int | None = None, seed: int = 0, reference: torch.Tensor | None = None) -> DecodeResult:
    """Decode with every per-step and per-run check; the result (see :func:`checked_run`)."""
    return checked_run(spec, model, prompts, gen_length=gen_length, block_length=block_length, steps=steps,
                       seed=seed, reference=reference).result


def check_strategy(spec: Any, model: Any, prompts: list[list[int]], *, gen_length: int, block_length: int,
                   steps: int | None = None, seed: int = 0, reference: torch.Tensor | None = None) -> DecodeResult:
    """Every invariant of the module docstring on one input; raises :class:`InvariantViolation`."""
    kwargs = {"gen_length": gen_length, "block_length": block_length, "steps": steps}
    result = checked_decode(spec, model, prompts, seed=seed, reference=reference, **kwargs)
    again = checked_decode(spec, model, prompts, seed=seed, reference=reference, **kwargs)
    if not torch.equal(result.tokens, again.tokens):
        raise InvariantViolation(f"{spec!r}: the same seed gave different outputs")
    declared = build_strategy(spec)
    stochastic = [name for name, value in declared.declared("stochastic").items() if value]
    batch_dependent = [name for name, value in declared.declared("batch_invariant").items() if not value]
    if batch_dependent:
        warnings.warn(f"{spec!r}: {', '.join(batch_dependent)} declare(s) batch_invariant = False; the kit does not "
                      "compare a batch with its rows decoded alone", stacklevel=2)
    # the uniform process starts its blocks from noise drawn for the whole batch: random by nature
    random_process = getattr(model, "process", "absorbing") == "uniform"
    if not stochastic and not batch_dependent and not random_process:  # a batch must decode as its rows alone
        for i, prompt in enumerate(prompts):
            alone = decode(_fresh(model), [prompt], strategy=spec, seed=seed,
                           reference=None if reference is None else reference[i:i + 1], **kwargs)
            batched = (result.tokens[i].tolist(), int(result.steps[i]), int(result.nfe[i]))
            single = (alone.tokens[0].tolist(), int(alone.steps[0]), int(alone.nfe[0]))
            if batched != single:
                raise InvariantViolation(
                    f"{spec!r} is batch dependent: row {i} decoded in a batch differs from the same row decoded alone "
                    f"(tokens {batched[0]} vs {single[0]}, steps {batched[1]} vs {single[1]}, NFE {batched[2]} vs "
                    f"{single[2]}); a greedy row's tokens, steps and NFE must not depend on the rest of its batch "
                    "(keep per-row state per row; name the rows a forward serves with model.logits(rows=...)). "
                    "A plugin whose choices are random declares `stochastic = True`; one that genuinely cannot "
                    "promise batch invariance declares `batch_invariant = False`")
    return result


def kit_model() -> Any:
    """The tiny real model the kit runs a plugin on when it declares ``supports_fake_models = False``."""
    return tiny_model(hidden_size=16, num_layers=1, num_heads=2, seed=3)


def check_strategy_property(spec: Any, *, model: Any = None, block_lengths: tuple[int, ...] | None = None,
                            references: bool = False, max_examples: int = 20, process: str | None = None) -> None:
    """Run :func:`check_strategy` over hypothesis-drawn decode shapes, on hypothesis-drawn fake
    models, or on ``model`` when given (prompts and references are drawn from token ids 2..23, so
    its vocabulary must hold them).

    What the spec's plugins declare decides the rest: a plugin with ``supports_fake_models =
    False`` (a KV cache) runs on :func:`kit_model` when no ``model`` is given; ``block_lengths``
    (default: the widths every plugin that declares some accepts, else 2, 4 and 8) are the block
    lengths drawn.  ``references``: pass a drawn reference response (for oracle plugins).
    ``process``: the diffusion process to check under (default: absorbing when every plugin
    serves it, else uniform, on fake models of that process or the tiny DiffusionGemma)."""
    run = Strategy.parse(spec).start()
    processes = served(run)
    process = process or (model.process if hasattr(model, "process") else processes[0])
    if process not in processes:
        raise InvariantViolation(f"{spec!r} cannot serve the {process} process (its plugins serve {processes})")
    if model is None and not all(run.declared("supports_fake_models").values()):
        model = kit_model() if process == "absorbing" else kit_diffusion_gemma()
    if block_lengths is None and getattr(model, "block_length", None) is not None:
        block_lengths = (model.block_length,)  # a block-autoregressive model's own block
    if block_lengths is None:
        widths = [set(w) for w in run.declared("block_lengths").values() if w]
        block_lengths = tuple(sorted(set.intersection(*widths))) if widths else (2, 4, 8)
        if not block_lengths:
            raise InvariantViolation(f"{spec!r}: its plugins declare block lengths with nothing in common "
                                     f"({run.declared('block_lengths')}); they cannot decode together")
    models = fake_models(process=process) if model is None else st.just(model)

    @settings(max_examples=max_examples, deadline=None, database=None)
    @given(model=models, shape=decode_shapes(block_lengths, references), seed=st.integers(0, 2**16))
    def check(model: Any, shape: dict, seed: int) -> None:
        check_strategy(spec, model, seed=seed, **shape)

    check()


# ------------------------------------------------------------------------------------------
# Stateful
# ------------------------------------------------------------------------------------------
def decoder_machine(spec: Any) -> type[RuleBasedStateMachine]:
    """A ``RuleBasedStateMachine`` that starts runs of ``spec`` on drawn models and shapes,
    steps them, and checks every invariant after each step.  Use ``decoder_machine(spec).TestCase``."""

    class DecoderMachine(RuleBasedStateMachine):
        @initialize(model=fake_models(), shape=decode_shapes(), seed=st.integers(0, 2**16))
        def begin(self, model: FakeModel, shape: dict, seed: int) -> None:
            self.start(model, shape, seed)

        def start(self, model: FakeModel, shape: dict, seed: int) -> None:
            self.model = _fresh(model)
            self.strategy = build_strategy(spec)
            ids, mask = encode_prompts(self.model, shape["prompts"])
            self.config = DecodeConfig.for_model(self.model, gen_length=shape["gen_length"],
                                                  block_length=shape["block_length"], steps=shape["steps"], seed=seed)
            state = DecodeState.start(ids, mask, self.config)
            self.prompt = state.prompt.clone()
            self.run = Run.begin(self.strategy, self.model, state)
            self.record: StepRecord | None = None

        @precondition(lambda self: self.run.done)
        @rule(model=fake_models(), shape=decode_shapes(), seed=st.integers(0, 2**16))
        def restart(self, model: FakeModel, shape: dict, seed: int) -> None:
            self.start(model, shape, seed)

        @precondition(lambda self: not self.run.done)
        @rule()
        def step(self) -> None:
            self.record = self.run.step()

        @precondition(lambda self: not self.run.done)
        @rule()
        def finish(self) -> None:
            while not self.run.done:
                check_step(self.strategy, self.run.step(), self.prompt)
            check_result(self.strategy, self.run.result(), self.model, self.config)

        @invariant()
        def promises_hold(self) -> None:
            if self.record is not None:
                check_step(self.strategy, self.record, self.prompt)
            finished = self.run.state.finished
            if bool((self.run.state.masked.any(1) & finished).any()):
                raise InvariantViolation("a finished row still has masked positions")

    DecoderMachine.__name__ = f"DecoderMachine[{spec}]"
    return DecoderMachine
