"""The invariant kit on every first-party plugin, every valid pair, third-party plugins
(one good, two broken) in distributions of their own."""

from __future__ import annotations

import itertools

import pytest

from dllm_strategies import SpecError, build_strategy
from dllm_strategies.discovery import strategy_plugins
from dllm_strategies.testing import InvariantViolation, check_strategy_property, decoder_machine

FIRST_PARTY = sorted(name for name, (info, _) in strategy_plugins().items() if info.distribution == "dllm-strategies")
# How the kit runs a plugin whose defaults it cannot check: the oracle's default reference is
# its own uncounted decode (checked in test_learn2pd), so the kit hands it a drawn reference.
KIT_SPECS = {"egp_oracle": "egp_oracle(reference=given)"}


def _strategy(spec: str):
    try:
        return build_strategy(spec)
    except SpecError:
        return None  # an invalid combination


def _spec(names) -> str:
    return "+".join(KIT_SPECS.get(name, name) for name in names)


SINGLES = [name for name in FIRST_PARTY if _strategy(_spec([name])) is not None]
PAIRS = [_spec(pair) for pair in itertools.combinations(FIRST_PARTY, 2) if _strategy(_spec(pair)) is not None]


def _kit(spec: str | None, max_examples: int) -> None:
    """The kit reads what the spec's plugins declare (a real model for a cache, one block length
    for a learned filter); only an oracle's given reference is the caller's to say."""
    plugins = _strategy(spec).plugins.values() if spec else []
    references = any(getattr(getattr(p, "options", None), "reference", None) == "given" for p in plugins)
    check_strategy_property(spec, references=references, max_examples=max_examples)


def test_pairs_come_from_the_registry():
    assert len(FIRST_PARTY) >= 18 and len(PAIRS) >= 100
    assert "threshold+entropy_threshold" not in PAIRS  # both own dllm_remask
    assert "prefix_cache+dual_cache" not in PAIRS and "prefix_cache+wino" not in PAIRS  # declared conflicts
    assert {"eot", "wino", "dual_cache", "egp_oracle", "learned_filter"} <= set(SINGLES)  # the shipped filter


@pytest.mark.parametrize("spec", [None, *SINGLES])
def test_every_first_party_plugin_keeps_the_promises(spec):
    _kit(KIT_SPECS.get(spec, spec), max_examples=8)


@pytest.mark.parametrize("spec", PAIRS)
def test_every_valid_pair_keeps_the_promises(spec):
    _kit(spec, max_examples=3)


TestDefaultMachine = decoder_machine(None).TestCase
TestThresholdMachine = decoder_machine("threshold(tau=0.6)+margin").TestCase
for _case in (TestDefaultMachine, TestThresholdMachine):
    _case.settings = __import__("hypothesis").settings(max_examples=10, stateful_step_count=8, deadline=None)


SOURCE = '''
import torch

import dllm_strategies
from dllm_strategies import hookimpl, ops


class Halves(dllm_strategies.Plugin):
    """Commit half of the window's masked positions (at least one) by score."""

    @hookimpl
    def dllm_remask(self, state, proposal, plan):
        window = plan.window(state)
        k = (window.sum(1) + 1) // 2
        return ops.top_k_mask(proposal.scores, k, window)


class PromptEater(dllm_strategies.Plugin):
    @hookimpl
    def dllm_after_step(self, state):
        state.prompt[:, -1] = state.config.mask_id


class Lazy(dllm_strategies.Plugin):
    @hookimpl
    def dllm_remask(self, state):
        return torch.zeros_like(state.masked)
'''


@pytest.fixture
def third_party(make_distribution):
    make_distribution("dllm-kit-demo", {"dllm_kit_demo.py": SOURCE},
                      {"halves": "dllm_kit_demo:Halves", "prompt_eater": "dllm_kit_demo:PromptEater",
                       "lazy": "dllm_kit_demo:Lazy"})


def test_third_party_plugin_passes_in_three_lines(third_party):
    check_strategy_property("halves", max_examples=10)
    check_strategy_property("halves+margin", max_examples=5)


def test_plugin_that_remasks_the_prompt_fails_readably(third_party):
    with pytest.raises(InvariantViolation, match="the prompt changed .* a plugin wrote into a state tensor"):
        check_strategy_property("prompt_eater", max_examples=5)


def test_plugin_that_commits_nothing_fails_readably(third_party):
    with pytest.raises(InvariantViolation, match="plugin 'lazy' committed nothing in live row 0 at step 0"):
        check_strategy_property("lazy", max_examples=5)


def test_checked_run_keeps_every_step_for_rule_checks():
    from dllm_strategies.testing import FakeModel, ScriptedLogits, checked_run

    model = FakeModel(logits_fn=ScriptedLogits(24), vocab_size=24)
    run = checked_run("threshold(tau=0.2)", model, [[3, 4], [5]], gen_length=8, block_length=4)
    assert len(run.records) == int(run.result.steps.max()) == run.state.step
    assert sum(int(r.commit.mask.sum()) for r in run.records) == 2 * 8  # every position committed once
    assert all(bool((r.plan.window_start % 4 == 0).all()) for r in run.records)
