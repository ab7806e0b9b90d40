"""Batch invariance: with greedy decoding, a row's tokens, steps and NFE are the same whatever
else is in its batch.  Every first-party strategy plugin and every valid pair of them (the caches
and ``eot`` included) decodes four prompts of very different lengths on a tiny real model, and
each row is compared with the same prompt decoded alone; the kit holds third-party plugins to
the same promise."""

from __future__ import annotations

import itertools

import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer
from dllm_strategies import Plugin, PluginError, SpecError, build_strategy, decode, hookimpl
from dllm_strategies.defaults import full_forward, model_inputs
from dllm_strategies.discovery import strategy_plugins
from dllm_strategies.models.tiny import tiny_model
from dllm_strategies.testing import FakeModel, InvariantViolation, ScriptedLogits, check_strategy

FIRST_PARTY = sorted(name for name, (info, _) in strategy_plugins().items() if info.distribution == "dllm-strategies")
# The greedy form of a plugin whose default samples (a stochastic plugin with no greedy form,
# ``random``, promises nothing about batches and is left out with its pairs).
GREEDY = {"gumbel": "gumbel(temperature=0)"}
# The promise is about masked (absorbing) diffusion, the shipped model's process: under the uniform
# process a block starts as noise drawn for the whole batch, random by nature.
PROCESS = "absorbing"
# Left padding from 3 to 40 tokens: the short rows finish, cross block boundaries and get cut at
# other steps than the long ones.
PROMPTS = [
    "Tom has 3",
    "Jack has 4 pencils . He loses 1 . How many pencils does Jack have now ?",
    "Tom has 8 cards . He gives 3 to Ben . He finds 5 more . How many cards does Tom have now ?",
    "Ann has 8 apples . She gets 5 more from Lily . She gives 8 to Lily . Lily takes 5 of them . Lily gives her "
    "6 more . How many apples does Ann have in the end ?",
]
# Two blocks of two steps each (as the schedule plans them; threshold rules take as many as they
# need): every row crosses a block boundary, at its own step, and a cache is reused in each block.
# A plugin that reads blocks of one width (the learned filter: 32) gets one block of it.
BLOCK, STEPS = 8, 4


def _plugins(names):
    try:
        return build_strategy("+".join(GREEDY.get(name, name) for name in names))
    except SpecError:
        return None  # a combination the spec parser rejects


def _specs() -> list[str]:
    combos = [(name,) for name in FIRST_PARTY] + list(itertools.combinations(FIRST_PARTY, 2))
    specs = []
    for names in combos:
        plugins = _plugins(names)
        if plugins is None or any(plugins.declared("stochastic").values()):
            continue
        if all(PROCESS in served for served in plugins.declared("processes").values()):
            specs.append(plugins.spec)
    return specs


SPECS = _specs()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two hundred small decodes: tensors this small gain nothing from a thread pool, and on a
    busy machine its synchronisation costs many times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """A tiny random bidirectional Llama in float64 (exact comparisons) with the arithmetic task's
    tokenizer, its matrices re-drawn at std 2 so that it is often confident: threshold rules
    commit several tokens a step, rows drift into different blocks, end-of-text gets predicted and
    rows are cut (a default-initialised random model predicts one token everywhere, in lockstep)."""
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, dtype=torch.float64,
                       seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.module.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 2.0)
    return model


def test_every_first_party_plugin_is_held_to_the_promise(model):
    assert len(SPECS) >= 130  # every plugin alone and every valid pair, from the installed entry points
    assert {"dual_cache", "eot+prefix_cache", "dual_cache+eot", "dual_cache+threshold", "klass+prefix_cache"} <= set(SPECS)
    for name in FIRST_PARTY:
        assert _plugins([name]).declared("batch_invariant") == {name: True}
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert min(lengths) == 3 and max(lengths) == 40
    # the model exercises what batch dependence hides in: rows drift apart and get cut
    shape = {"gen_length": 2 * BLOCK, "block_length": BLOCK, "steps": STEPS}
    assert len(set(decode(model, PROMPTS, strategy="threshold", **shape).steps.tolist())) > 1
    assert bool((decode(model, PROMPTS, strategy="eot", **shape).tokens == model.fill_id).any())


@pytest.mark.parametrize("spec", SPECS)
def test_a_row_decodes_the_same_in_a_batch_and_alone(model, spec):
    widths = [w for w in build_strategy(spec).declared("block_lengths").values() if w]
    block = widths[0][0] if widths else BLOCK
    shape = {"gen_length": block if widths else 2 * block, "block_length": block, "steps": STEPS}
    with torch.inference_mode():
        batch = decode(model, PROMPTS, strategy=spec, **shape)
        for i, prompt in enumerate(PROMPTS):
            alone = decode(model, [prompt], strategy=spec, **shape)
            got = (batch.tokens[i].tolist(), int(batch.steps[i]), int(batch.nfe[i]), batch.block_nfe[i].tolist())
            want = (alone.tokens[0].tolist(), int(alone.steps[0]), int(alone.nfe[0]), alone.block_nfe[0].tolist())
            assert got == want, f"{spec!r}, row {i}: (tokens, steps, NFE, NFE per block) in a batch vs alone"


# ------------------------------------------------------------------------------------------
# The kit holds third-party plugins to the same promise
# ------------------------------------------------------------------------------------------
class ExtraForward(Plugin):
    """Test plugin: the step's forward, plus one more over the rows whose prompt is longer than
    two tokens (a stand-in for a cache refreshing some rows), naming them with ``rows=``."""

    name = "extra_forward"
    name_rows = True

    @hookimpl
    def dllm_forward(self, model, state, plan):
        logits = full_forward(model, state)
        rows = (state.prompt_mask.sum(1) > 2).nonzero().squeeze(1)
        if rows.numel():
            ids, attention, positions = model_inputs(state.take(rows))
            model.logits(ids, attention_mask=attention, position_ids=positions, rows=rows if self.name_rows else None)
        return logits


class ExtraForwardChargedToAll(ExtraForward):
    """The same forward, not naming its rows: every row of the batch is charged for it."""

    name = "extra_forward_charged_to_all"
    name_rows = False


class BatchMeanThreshold(Plugin):
    """Test plugin: commit the window positions at least as confident as the batch's mean, a
    threshold read from the other rows."""

    name = "batch_mean_threshold"

    @hookimpl
    def dllm_remask(self, state, proposal, plan):
        window = plan.window(state)
        bar = proposal.confidence[window].mean()
        best = proposal.scores.masked_fill(~window, float("-inf")).argmax(1, keepdim=True)
        return (window & (proposal.confidence >= bar)).scatter(1, best, True)


class DeclaredBatchMeanThreshold(BatchMeanThreshold):
    name = "declared_batch_mean_threshold"
    batch_invariant = False


FAKE = FakeModel(logits_fn=ScriptedLogits(24, seed=1), vocab_size=24)
FAKE_PROMPTS = [[5], [6, 7, 8, 9, 10], [11, 12, 13]]


def test_a_forward_that_names_its_rows_charges_only_them():
    result = check_strategy([ExtraForward], FAKE, FAKE_PROMPTS, gen_length=8, block_length=4)
    assert result.nfe.tolist() == [8, 16, 16] and result.forwards == 16  # two forwards a step, one for row 0


def test_the_kit_names_batch_dependence_as_the_fault():
    with pytest.raises(InvariantViolation, match=r"batch dependent: row 0 .*NFE 16 vs 8.*batch_invariant = False"):
        check_strategy([ExtraForwardChargedToAll], FAKE, FAKE_PROMPTS, gen_length=8, block_length=4)
    with pytest.raises(InvariantViolation, match=r"batch dependent: row \d .*steps .*batch_invariant = False"):
        check_strategy([BatchMeanThreshold], FAKE, FAKE_PROMPTS, gen_length=8, block_length=4)
    with pytest.warns(UserWarning, match="declared_batch_mean_threshold.*batch_invariant = False"):
        check_strategy([DeclaredBatchMeanThreshold], FAKE, FAKE_PROMPTS, gen_length=8, block_length=4)


def test_a_call_naming_rows_it_does_not_feed_is_refused():
    class Wrong(ExtraForward):
        name = "wrong_rows"

        @hookimpl
        def dllm_forward(self, model, state, plan):
            ids, attention, positions = model_inputs(state)
            model.logits(ids, attention_mask=attention, position_ids=positions, rows=state.rows[:1])
            return full_forward(model, state)

    with pytest.raises(PluginError, match=r"wrong_rows.*rows=.*one row of the step per input row"):
        decode(FAKE, FAKE_PROMPTS, strategy=[Wrong], gen_length=4, block_length=4)
