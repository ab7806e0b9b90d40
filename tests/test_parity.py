"""What the authors' decoders compute, computed the same way: the core's confidence, Dream's
schedule as a plugin (with the empty step the core allows only to a schedule that declares it),
and the rules the reference loops of ``test_reference_llada`` do not reach."""

from __future__ import annotations

import attrs
import pytest
import torch

from dllm_baselines.dream_schedule import DreamSchedule
from dllm_strategies import DecodeConfig, DecodeState, Plugin, PluginError, build_strategy, decode, hookimpl, ops
from dllm_strategies.defaults import semi_ar_plan
from dllm_strategies.testing import check_strategy_property
from dllm_strategies.testing.invariants import InvariantViolation, check_step, checked_run
from dllm_strategies.testing.reference import dream_transfer_count


# ----------------------------------------------------------------------------- confidence

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_confidence_is_softmax_then_gather_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 50, generator=g) * torch.tensor([1.0, 8.0, 30.0])[:, None, None]).to(dtype)
    tokens = logits.argmax(-1)
    expected = torch.gather(torch.softmax(logits, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)
    got = ops.confidence(logits, tokens)
    assert got.dtype == dtype and torch.equal(got, expected)


def test_confidence_keeps_saturated_candidates_apart():
    # Top logit 17 to 19 above the rest: softmax gives 0.9999999 / 0.99999994 / 1.0, but
    # exp(logit - logsumexp) rounds the first two to 1.0 as well when the logits are large.
    logits = torch.full((3, 20), 100.0)
    logits[:, 0] = 100.0 + torch.tensor([15.5, 16.5, 19.0])
    got = ops.confidence(logits, torch.zeros(3, dtype=torch.long))
    old = torch.exp(logits[:, 0] - torch.logsumexp(logits, -1))
    assert len(set(got.tolist())) == 3
    assert len(set(old.tolist())) < 3


def test_reference_entropy_is_the_authors_formula():
    logits = torch.randn(2, 5, 30, dtype=torch.float32) * 5
    p64 = torch.softmax(logits.double(), -1)
    assert torch.equal(ops.reference_entropy(logits, eps=1e-12, dtype=torch.float64),
                       -torch.sum(p64 * torch.log(p64 + 1e-12), dim=-1))  # dParallel
    p = torch.softmax(logits, -1)
    assert torch.equal(-ops.reference_entropy(logits, eps=1e-10), torch.sum(p * torch.log(p + 1e-10), dim=-1))  # Dream


def test_top2_margin_is_dreams_sorted_difference():
    logits = torch.randn(4, 9, 40, dtype=torch.bfloat16) * 4
    ranked = torch.sort(torch.softmax(logits, -1), dim=-1, descending=True).values
    assert torch.equal(ops.top2_margin(logits), ranked[..., 0] - ranked[..., 1])


# ----------------------------------------------------------------------------- Dream's schedule

@pytest.mark.parametrize("gen_length,steps", [(64, 64), (256, 256), (1024, 1024), (256, 64), (100, 300)])
def test_dream_schedule_plans_dreams_counts(gen_length, steps):
    plugin = DreamSchedule()
    config = DecodeConfig(gen_length=gen_length, block_length=gen_length, steps=steps, mask_id=0, fill_id=1)
    state = DecodeState.start(torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.bool), config)
    budgets, masked = [], gen_length
    for i in range(steps):
        budgets.append(int(plugin.dllm_schedule(state).budget[0]))
        assert budgets[-1] == dream_transfer_count(masked, i, steps)
        masked -= budgets[-1]
        response = state.response.clone()
        response[0, masked:] = 7
        state = attrs.evolve(state, response=response, window_start=torch.zeros(1, dtype=torch.long),
                             window_steps=state.window_steps + 1, taken=state.taken + 1, step=state.step + 1)
    assert masked == 0
    if gen_length == steps:  # one token per step on average: none at first, the float32 leftovers last
        assert budgets[0] == 0 and budgets[-1] == (3 if gen_length == 1024 else 2)


@pytest.mark.parametrize("gen_length,steps", [(24, 24), (16, 8), (8, 24), (5, 3)])
def test_dream_schedule_budgets_are_dreams_counts(tiny32, gen_length, steps):
    run = checked_run("dream_schedule", tiny32, [[5, 6, 7]], gen_length=gen_length, block_length=gen_length,
                      steps=steps)
    budgets = [int(r.plan.budget[0]) for r in run.records]
    expected, masked = [], gen_length
    for i in range(steps):
        expected.append(dream_transfer_count(masked, i, steps))
        masked -= expected[-1]
    assert budgets == expected
    assert [int(r.commit.mask.sum()) for r in run.records] == expected
    assert run.result.steps.tolist() == [steps] and run.result.nfe.tolist() == [steps]


def test_dream_schedule_walks_blocks_with_steps_per_block(tiny32):
    run = checked_run("dream_schedule", tiny32, [[5, 6, 7], [8, 9]], gen_length=16, block_length=8, steps=8)
    starts = [r.plan.window_start.tolist() for r in run.records]
    assert starts == [[0, 0]] * 4 + [[8, 8]] * 4
    first = [int(r.plan.budget[0]) for r in run.records[:4]]
    assert first == [dream_transfer_count(m, i, 4) for i, m in enumerate([8, 8 - first[0], 8 - sum(first[:2]),
                                                                            8 - sum(first[:3])])]


@pytest.mark.parametrize("spec", ["dream_schedule", "dream_schedule+entropy",
                                  "dream_schedule(eps=0.1)+threshold(tau=0.5)"])
def test_dream_schedule_keeps_every_promise(spec):
    check_strategy_property(spec, max_examples=4)


def test_dream_schedule_rejects_a_bad_eps():
    with pytest.raises(Exception, match="eps"):
        build_strategy("dream_schedule(eps=0)")


# ----------------------------------------------------------------------------- empty steps in the core

class _Idle(Plugin):
    """LLaDA's schedule, but nothing on each row's first step."""

    empty_steps = True

    @hookimpl
    def dllm_schedule(self, state):
        plan = semi_ar_plan(state)
        return attrs.evolve(plan, budget=torch.where(state.taken == 0, 0, plan.budget))


class _Undeclared(_Idle):
    empty_steps = False


class _Stalling(_Idle):
    @hookimpl
    def dllm_schedule(self, state):
        plan = semi_ar_plan(state)
        return attrs.evolve(plan, budget=torch.zeros_like(plan.budget))


def test_an_empty_step_needs_the_declaration(tiny32):
    with pytest.raises(PluginError, match="empty_steps"):
        decode(tiny32, [[5, 6]], strategy=[_Undeclared()], gen_length=8, block_length=8)


def test_a_declared_empty_step_commits_nothing_and_forces_nothing(tiny32):
    result = decode(tiny32, [[5, 6], [7]], strategy=[_Idle()], gen_length=8, block_length=8, steps=8)
    assert result.forced.tolist() == [0, 0]
    # The empty first step counts as a step; LLaDA's schedule spreads the 8 tokens over the 7 left.
    assert result.steps.tolist() == [8, 8]
    assert int((result.commit_step == 0).sum()) == 0
    assert result.tokens_per_step == [[0, 2, 1, 1, 1, 1, 1, 1]] * 2


def test_an_empty_step_is_refused_at_the_last_declared_step(tiny32):
    with pytest.raises(PluginError, match="last declared step"):
        decode(tiny32, [[5, 6]], strategy=[_Stalling()], gen_length=8, block_length=8, steps=4)


def test_the_kit_still_demands_progress_from_other_schedules(tiny32):
    run = checked_run([_Idle()], tiny32, [[5, 6]], gen_length=4, block_length=4, steps=4)
    record = run.records[0]
    assert int(record.commit.mask.sum()) == 0  # allowed: declared and planned
    undeclared = attrs.evolve(record, plan=attrs.evolve(record.plan, budget=torch.ones_like(record.plan.budget)))
    with pytest.raises(InvariantViolation, match="committed nothing"):
        check_step(run.strategy, undeclared, record.before.prompt)
