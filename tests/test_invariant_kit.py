"""The invariant kit on every first-party plugin, every valid pair, third-party plugins
(one good, two broken) in distributions of their own."""

from __future__ import annotations

import itertools

import pytest

from dllm_strategies import SpecError, build_strategy
from dllm_strategies.registry import strategy_plugins
from dllm_strategies.testing import InvariantViolation, check_strategy_property, decoder_machine

FIRST_PARTY = sorted(name for name, (info, _) in strategy_plugins().items() if info.distribution == "dllm-strategies")


def _valid(spec: str) -> bool:
    try:
        build_strategy(spec)
    except SpecError:
        return False
    return True


PAIRS = [f"{a}+{b}" for a, b in itertools.combinations(FIRST_PARTY, 2) if _valid(f"{a}+{b}")]


def test_pairs_come_from_the_registry():
    assert len(FIRST_PARTY) >= 8 and len(PAIRS) >= 10
    assert "threshold+entropy_threshold" not in PAIRS  # both own dllm_remask


@pytest.mark.parametrize("spec", [None, *FIRST_PARTY])
def test_every_first_party_plugin_keeps_the_promises(spec):
    check_strategy_property(spec, max_examples=8)


@pytest.mark.parametrize("spec", PAIRS)
def test_every_valid_pair_keeps_the_promises(spec):
    check_strategy_property(spec, max_examples=4)


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
