"""What a step computes once and shares (Plan.window / inside, Logits.derived / reach / probabilities,
DecodeState.steps_in_window / of_masked, a plugin class's hook markers): the shared value equals a fresh
computation, and a new value (an evolved state, new logits) never reads a stale one."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_block_diffusion.denoising import categorical_entropy
from dllm_strategies import Plugin, Strategy, hookimpl
from dllm_strategies.defaults import semi_ar_plan
from dllm_strategies.state import DecodeConfig, DecodeState, Logits, Plan, SameTensors


def _state(B: int = 3, G: int = 8, L: int = 4) -> DecodeState:
    config = DecodeConfig(gen_length=G, block_length=L, mask_id=9, fill_id=8)
    return DecodeState.start(torch.ones(B, 2, dtype=torch.long), torch.ones(B, 2, dtype=torch.bool), config)


def test_plan_window_is_shared_within_a_state_and_fresh_for_a_new_one():
    state = _state()
    plan = Plan(window_start=torch.tensor([0, 0, 4]), window_end=torch.tensor([4, 4, 8]),
                budget=torch.ones(3, dtype=torch.long))
    first = plan.window(state)
    assert plan.window(state) is first
    assert first.sum(1).tolist() == [4, 4, 4]
    response = state.response.clone()
    response[:, 0] = 5  # position 0 decided in the new state
    later = attrs.evolve(state, response=response, commit_step=state.commit_step.index_fill(1, torch.tensor([0]), 0))
    assert plan.window(later).sum(1).tolist() == [3, 3, 4]
    assert torch.equal(plan.window(state), first)


def test_steps_in_window_is_shared_for_one_start_tensor_and_recomputed_for_another():
    state = attrs.evolve(_state(), window_start=torch.tensor([0, 4, 4]), window_steps=torch.tensor([2, 3, 1]))
    start = torch.tensor([0, 4, 0])
    steps = state.steps_in_window(start)
    assert steps.tolist() == [2, 3, 0]
    assert state.steps_in_window(start) is steps
    assert state.steps_in_window(torch.tensor([4, 4, 4])).tolist() == [0, 3, 1]
    assert attrs.evolve(state, window_steps=torch.tensor([5, 5, 5])).steps_in_window(start).tolist() == [5, 5, 0]


def test_columns_are_made_once_and_carried():
    state = _state()
    assert state.columns.tolist() == list(range(8))
    assert attrs.evolve(state, step=3).columns is state.columns
    assert state.take(torch.tensor([1])).columns is state.columns


def test_logits_derived_runs_once_per_logits_and_not_for_evolved_ones():
    calls = []

    def double(values):
        calls.append(1)
        return values * 2

    logits = Logits(values=torch.ones(2, 3, 5), start=1)
    assert logits.derived(double) is logits.derived(double)
    assert len(calls) == 1
    other = attrs.evolve(logits, values=torch.zeros(2, 3, 5))
    assert float(other.derived(double).sum()) == 0.0 and len(calls) == 2
    assert logits.reach(8, torch.device("cpu")) is logits.reach(8, torch.device("cpu"))
    assert logits.reach(8, torch.device("cpu"))[0].tolist() == [False, True, True, True, False, False, False, False]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]), st.integers(1, 3),
       st.integers(1, 6), st.integers(2, 40), st.floats(0.01, 60.0), st.integers(0, 2**16))
def test_categorical_entropy_is_bitwise_torch_distributions(dtype, B, W, V, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, W, V, generator=g) * scale).to(dtype)
    logits[0, 0, : V // 2] = float("-inf")  # impossible tokens, as a soft-capped or masked head gives
    expected = torch.distributions.Categorical(logits=logits).entropy()
    got = categorical_entropy(logits)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


class _Counting(Plugin):
    name = "counting"

    @hookimpl
    def dllm_score(self, confidence):
        return confidence


def test_hook_markers_read_once_per_class_still_register_every_run():
    strategy = Strategy.parse([_Counting])
    first, second = strategy.start(), strategy.start()
    for run in (first, second):
        names = [impl.plugin_name for impl in run.hook.dllm_score.get_hookimpls()]
        assert names[-1] == "counting"
    assert first.plugins["counting"] is not second.plugins["counting"]


def test_evolve_keeps_only_the_views_its_changes_leave_alone():
    state = _state()
    live, masked = state.live, state.masked
    same = state.evolve(step=1, nfe=state.nfe + 1)
    assert same.live is live and same.masked is masked
    response = state.response.clone()
    response[0, 0] = 3
    changed = state.evolve(response=response)
    assert changed.live is live
    assert changed.masked[0].tolist() == [False] + [True] * 7
    cut = state.evolve(live_length=torch.tensor([8, 8, 4]))
    assert cut.live[2].tolist() == [True] * 4 + [False] * 4
    assert attrs.evolve(state, step=2).masked is not masked  # plain attrs.evolve recomputes: still right
    assert torch.equal(attrs.evolve(state, step=2).masked, masked)


def _uniform_state(B: int = 2, G: int = 8, L: int = 4) -> DecodeState:
    config = DecodeConfig(gen_length=G, block_length=L, mask_id=9, fill_id=8, process="uniform")
    return DecodeState.start(torch.ones(B, 2, dtype=torch.long), torch.ones(B, 2, dtype=torch.bool), config)


def test_of_masked_is_shared_while_the_undecided_positions_stay_and_recomputed_after():
    calls = []

    def undecided_per_row(state):
        calls.append(1)
        return state.masked.sum(1)

    state = _uniform_state()
    assert state.of_masked(undecided_per_row).tolist() == [8, 8] and len(calls) == 1
    # uniform process: a new canvas (response) leaves the undecided positions as they were
    noisy = state.evolve(response=torch.full_like(state.response, 3), step=1)
    assert noisy.masked is state.masked and noisy.of_masked(undecided_per_row).tolist() == [8, 8]
    assert len(calls) == 1
    decided = noisy.evolve(commit_step=noisy.commit_step.index_fill(1, torch.tensor([0, 1]), 1))
    assert decided.of_masked(undecided_per_row).tolist() == [6, 6] and len(calls) == 2
    # absorbing process: the response is what masked reads
    absorbing = _state(B=2)
    absorbing.of_masked(undecided_per_row)
    committed = absorbing.evolve(response=absorbing.response.index_fill(1, torch.tensor([0]), 4))
    assert committed.of_masked(undecided_per_row).tolist() == [7, 7] and len(calls) == 4


def test_the_fast_evolve_equals_attrs_evolve_and_refuses_unknown_fields():
    state = _state()
    nfe = state.nfe + 2
    fast, slow = state.evolve(step=4, nfe=nfe), attrs.evolve(state, step=4, nfe=nfe)
    for field in attrs.fields(DecodeState):
        if field.name != "_views":
            assert getattr(fast, field.name) is getattr(slow, field.name), field.name
    assert fast == slow
    with pytest.raises(TypeError, match="no field"):
        state.evolve(nonsense=1)


def test_plan_inside_and_the_schedule_keep_their_tensors_within_a_block():
    state = _uniform_state()
    plan = semi_ar_plan(state)
    assert plan.inside(state.columns) is plan.inside(state.columns)
    assert plan.inside(state.columns).sum(1).tolist() == [4, 4]
    later = state.evolve(response=torch.full_like(state.response, 3), window_start=plan.window_start,
                         window_steps=torch.ones(2, dtype=torch.long), step=1)
    again = semi_ar_plan(later)
    assert again.window_start is plan.window_start and again.window_end is plan.window_end
    assert later.steps_in_window(again.window_start) is later.window_steps  # the same tensor: no comparison
    # a new plan of the same window shares its columns; another window, even of equal values, does not
    assert again.inside(later.columns) is plan.inside(state.columns)
    twin = Plan(window_start=plan.window_start.clone(), window_end=plan.window_end, budget=plan.budget)
    assert twin.inside(state.columns) is not plan.inside(state.columns)
    assert torch.equal(twin.inside(state.columns), plan.inside(state.columns))


def test_same_tensors_answers_for_the_very_same_objects_only():
    memo, calls = SameTensors(), []

    def compute(value):
        calls.append(value)
        return value

    a, b = torch.tensor([1, 2]), torch.tensor([1, 2])
    assert memo.get((a,), lambda: compute("a")) == "a"
    assert memo.get((a,), lambda: compute("again")) == "a"
    assert memo.get((b,), lambda: compute("b")) == "b"  # equal values, another tensor: recomputed
    assert memo.get((b, a), lambda: compute("pair")) == "pair"  # other keys
    assert memo.get((a,), lambda: compute("a2")) == "a2"  # one entry: the last keys only
    assert calls == ["a", "b", "pair", "a2"]


def test_logits_probabilities_are_the_softmax_and_computed_once():
    values = torch.randn(2, 3, 7)
    logits = Logits(values=values, start=0)
    assert torch.equal(logits.probabilities, torch.softmax(values, dim=-1))
    assert logits.probabilities is logits.probabilities
    assert logits.span(8, torch.device("cpu")) is Logits(values=values * 2, start=0).span(8, torch.device("cpu"))
