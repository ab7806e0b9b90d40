"""Plugin discovery, specs, options, conflicts, per-run managers, error attribution."""

from __future__ import annotations

import pytest
import torch

from dllm_strategies import PluginError, SpecError, build_strategy, decode
from dllm_strategies.discovery import strategy_plugins
from dllm_strategies.testing import FakeModel, ScriptedLogits

BASELINES = {"low_confidence", "random", "margin", "entropy", "gumbel", "threshold", "entropy_threshold", "topk"}

PLUGIN_SOURCE = '''
import attrs
import torch
import dllm_strategies
from dllm_strategies import hookimpl, ops
from dllm_strategies.defaults import semi_ar_plan


class Reverse(dllm_strategies.Plugin):
    """Decode blocks right to left."""

    @attrs.frozen
    class Options:
        width: int = 4

    @hookimpl
    def dllm_schedule(self, state):
        plan = semi_ar_plan(state)
        B, G = state.batch_size, state.config.gen_length
        blocks = state.masked.view(B, -1, state.config.block_length).any(-1)
        last = blocks.shape[1] - 1 - blocks.flip(1).long().argmax(1)
        start = last * state.config.block_length
        return dllm_strategies.Plan(window_start=start, window_end=start + state.config.block_length,
                                    budget=torch.full_like(plan.budget, self.options.width))


class Explodes:
    @hookimpl
    def dllm_score(self, tokens):
        raise RuntimeError("boom")


class Misspelled:
    @hookimpl
    def dllm_remsk(self, state):
        return None


class Counter:
    def __init__(self):
        self.steps = 0

    @hookimpl
    def dllm_after_step(self, state):
        self.steps += 1
'''


def fake() -> FakeModel:
    return FakeModel(logits_fn=ScriptedLogits(40), vocab_size=40)


def test_builtin_plugins_are_found_through_entry_points():
    found = strategy_plugins()
    assert BASELINES <= set(found)
    for name in BASELINES:
        assert found[name][0].distribution == "dllm-strategies"


def test_third_party_distribution_composes_with_builtins(make_distribution):
    make_distribution("dllm-reverse", {"dllm_reverse_plugin/__init__.py": PLUGIN_SOURCE},
                      {"reverse": "dllm_reverse_plugin:Reverse"})
    found = strategy_plugins()
    assert found["reverse"][0].distribution == "dllm-reverse"
    model = fake()
    result = decode(model, [[5, 6]], strategy="reverse(width=2)+margin", gen_length=8, block_length=4, trace=True)
    first = result.trace[0][0]
    assert (first[4:] != model.mask_id).sum() == 2 and (first[:4] == model.mask_id).all()
    assert result.steps.tolist() == [4]


def test_allowlist_hides_other_distributions(make_distribution, monkeypatch):
    make_distribution("dllm-reverse", {"dllm_reverse_plugin/__init__.py": PLUGIN_SOURCE},
                      {"reverse": "dllm_reverse_plugin:Reverse"})
    monkeypatch.setenv("DLLM_STRATEGIES_PLUGINS", "dllm-strategies")
    assert "reverse" not in strategy_plugins()
    with pytest.raises(SpecError, match="limits loading"):
        build_strategy("reverse")
    monkeypatch.setenv("DLLM_STRATEGIES_PLUGINS", "")
    assert strategy_plugins() == {}


def test_conflict_names_both_plugins_and_the_hook():
    with pytest.raises(SpecError, match="'threshold' and 'entropy_threshold' both implement dllm_remask"):
        build_strategy("threshold+entropy_threshold")


def test_bang_marks_the_winner():
    strategy = build_strategy("threshold(tau=0.5)!+entropy_threshold")
    assert strategy.owners["dllm_remask"] == "threshold"
    strategy = build_strategy("threshold+entropy_threshold!")
    assert strategy.owners["dllm_remask"] == "entropy_threshold"


def test_options_are_typed_and_validated():
    assert build_strategy("threshold(tau=1)").plugins["threshold"].options.tau == 1.0
    with pytest.raises(SpecError, match="has no option 'tua'; did you mean 'tau'"):
        build_strategy("threshold(tua=0.9)")
    with pytest.raises(SpecError, match="expected float, got str"):
        build_strategy("threshold(tau=high)")
    with pytest.raises(SpecError, match="expected int, got float"):
        build_strategy("topk(k=2.5)")
    with pytest.raises(SpecError, match="bad options for plugin 'topk'"):
        build_strategy("topk(k=0)")
    with pytest.raises(SpecError, match="takes no options"):
        build_strategy("margin(x=1)")
    with pytest.raises(SpecError, match="chosen twice"):
        build_strategy("margin+margin")


def test_each_run_gets_its_own_manager_and_instances():
    a, b = build_strategy("threshold(tau=0.5)"), build_strategy("margin")
    assert a.pm is not b.pm
    assert "threshold" not in b.plugins and b.owners["dllm_remask"] == "core"
    assert build_strategy("threshold").plugins["threshold"] is not a.plugins["threshold"]


def test_plugin_that_raises_is_named_with_its_hook(make_distribution):
    make_distribution("dllm-bad", {"dllm_bad_plugin/__init__.py": PLUGIN_SOURCE},
                      {"explodes": "dllm_bad_plugin:Explodes"})
    with pytest.raises(PluginError, match="plugin 'explodes' raised RuntimeError in dllm_score: boom") as info:
        decode(fake(), [[5]], strategy="explodes", gen_length=4, block_length=4)
    assert info.value.plugin == "explodes" and info.value.hook == "dllm_score"


def test_misspelled_hook_fails_check_pending(make_distribution):
    make_distribution("dllm-typo", {"dllm_typo_plugin/__init__.py": PLUGIN_SOURCE},
                      {"typo": "dllm_typo_plugin:Misspelled"})
    with pytest.raises(SpecError, match="dllm_remsk"):
        build_strategy("typo")


def test_no_state_leaks_between_runs(make_distribution):
    make_distribution("dllm-count", {"dllm_count_plugin/__init__.py": PLUGIN_SOURCE},
                      {"counter": "dllm_count_plugin:Counter"})
    first = build_strategy("counter")
    decode(fake(), [[5]], strategy=first, gen_length=4, block_length=4)
    assert first.plugins["counter"].steps == 4
    second = build_strategy("counter")
    assert second.plugins["counter"].steps == 0


def test_commit_of_unmasked_position_is_a_contract_error(make_distribution):
    source = PLUGIN_SOURCE + '''
class Greedy:
    @hookimpl
    def dllm_remask(self, state, proposal, plan):
        return plan.window(state) | ~state.masked  # re-commits earlier tokens from step 1 on
'''
    make_distribution("dllm-greedy", {"dllm_greedy_plugin/__init__.py": source},
                      {"greedy": "dllm_greedy_plugin:Greedy"})
    with pytest.raises(PluginError, match="plugin 'greedy' broke the dllm_remask contract: committed"):
        decode(fake(), [[5]], strategy="greedy", gen_length=8, block_length=4)


def test_revocation_needs_a_revocable_plugin(make_distribution):
    source = PLUGIN_SOURCE + '''
class Revoker:
    @hookimpl
    def dllm_remask(self, state, proposal, plan):
        mask = ops.best_mask(proposal.scores, plan.window(state))
        revoke = (~state.masked) & state.live
        return dllm_strategies.Commit(mask=mask, revoke=revoke)
'''
    make_distribution("dllm-revoke", {"dllm_revoke_plugin/__init__.py": source},
                      {"revoker": "dllm_revoke_plugin:Revoker"})
    with pytest.raises(PluginError, match="is not revocable"):
        decode(fake(), [[5]], strategy="revoker", gen_length=8, block_length=4)
