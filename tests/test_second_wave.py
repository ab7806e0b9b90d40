"""The second wave of strategies (EB-Sampler, WINO, Prophet, CreditDecoding, LocalLeap, KLASS):
each rule pinned on hand-made logits, the invariant kit, and end-to-end decoding on a tiny model."""

from __future__ import annotations

import math
import re
import types
from pathlib import Path

import attrs
import pytest
import torch

from dllm_strategies import ConfigError, PluginError, SpecError, StepLimitError, build_strategy, decode
from dllm_strategies import ops
from dllm_strategies.decode import encode_prompts
from dllm_strategies.defaults import full_forward, semi_ar_plan
from dllm_strategies.state import Commit, DecodeConfig, DecodeState, Logits, Plan, Proposal
from dllm_strategies.testing import FakeModel, ScriptedLogits, check_strategy_property

V = 12
MASK = 0
INF = float("inf")
SPECS = ["eb_sampler", "wino", "prophet", "credit", "local_leap", "klass"]
TEXT_PROMPTS = ["Tom has 3 apples", "Ann has 2 books and 4 coins"]


# ------------------------------------------------------------------------------------------
# Building blocks: a state, a plan, logits and a proposal as decode._step makes them
# ------------------------------------------------------------------------------------------
def start(G: int, block: int, rows: int = 1, steps: int | None = None) -> DecodeState:
    config = DecodeConfig(gen_length=G, block_length=block, steps=steps, mask_id=MASK, fill_id=1, eot_ids=(1,))
    prompt = torch.tensor([[5, 6]] * rows)
    return DecodeState.start(prompt, torch.ones_like(prompt, dtype=torch.bool), config)


def committed(state: DecodeState, tokens: dict[int, int], at: dict[int, int] | None = None, step: int = 0,
              row: int = 0) -> DecodeState:
    """``state`` with response columns ``tokens`` (col -> token) committed in ``row`` at steps ``at``."""
    response, commit_step = state.response.clone(), state.commit_step.clone()
    for col, token in tokens.items():
        response[row, col] = token
        commit_step[row, col] = (at or {}).get(col, 0)
    return attrs.evolve(state, response=response, commit_step=commit_step, step=step)


def plan_of(state: DecodeState, start: int, end: int, budget: int = 1) -> Plan:
    B = state.batch_size
    return Plan(window_start=torch.full((B,), start), window_end=torch.full((B,), end),
                budget=torch.full((B,), budget))


def peaked(conf, token: int = 2, vocab: int = V) -> torch.Tensor:
    """Logits (..., vocab) whose softmax gives ``token`` probability ``conf`` (the rest uniform)."""
    conf = torch.as_tensor(conf, dtype=torch.float64)
    height = torch.log(conf * (vocab - 1) / (1 - conf))
    out = torch.zeros(*conf.shape, vocab, dtype=torch.float64)
    out[..., token] = height
    return out


def gapped(gap, token: int = 2, vocab: int = V) -> torch.Tensor:
    """Logits (..., vocab) whose top-1 minus top-2 logit is ``gap``."""
    gap = torch.as_tensor(gap, dtype=torch.float64)
    out = torch.zeros(*gap.shape, vocab, dtype=torch.float64)
    out[..., token] = gap
    return out


def propose(state: DecodeState, values: torch.Tensor, start: int = 0) -> Proposal:
    """The proposal decode._step builds from these logits (greedy, confidence scores)."""
    G = state.config.gen_length
    logits = Logits(values=values, start=start)
    tokens = ops.argmax_except(values, MASK)
    confidence = ops.confidence(values, tokens)
    candidates = state.masked & logits.span(G, state.device)[None, :]
    return Proposal(tokens=logits.widen(tokens, MASK, G), confidence=logits.widen(confidence, 0.0, G),
                    scores=logits.widen(confidence, -INF, G).masked_fill(~candidates, -INF), logits=logits)


def with_confidence(state: DecodeState, confidence: list[list[float]]) -> Proposal:
    """A proposal whose candidates (token 2) have exactly these confidences (each above 1 / V,
    so token 2 stays the argmax)."""
    return propose(state, peaked([[min(max(c, 1e-6), 1 - 1e-9) for c in row] for row in confidence]))


def plugin(spec: str):
    """The instance a run builds for ``spec`` (found through its entry point)."""
    strategy = build_strategy(spec)
    (instance,) = strategy.plugins.values()
    return instance


def fake(vocab: int = V) -> FakeModel:
    return FakeModel(logits_fn=ScriptedLogits(vocab), vocab_size=vocab, mask_id=MASK, eot_ids=(1,), fill_id=1)


def cols(mask: torch.Tensor, row: int = 0) -> list[int]:
    return mask[row].nonzero().squeeze(1).tolist()


# ------------------------------------------------------------------------------------------
# EB-Sampler
# ------------------------------------------------------------------------------------------
def eb_reference(entropy: list[float], eligible: list[int], gamma: float) -> set[int]:
    order = sorted(eligible, key=lambda i: (entropy[i], i))
    k = 1
    for j in range(2, len(order) + 1):
        prefix = [entropy[i] for i in order[:j]]
        if sum(prefix) - max(prefix) > gamma:
            break
        k = j
    return set(order[:k])


def test_eb_sampler_commits_exactly_the_prefix_the_entropy_bound_allows():
    G = 8
    state = committed(start(G, 4), {1: 3})  # column 1 committed earlier: never chosen again
    conf = [0.99, 0.999, 0.9, 0.97, 0.6, 0.95, 0.999, 0.5]
    proposal = with_confidence(state, [conf])
    entropy = ops.entropy(proposal.logits.values)[0].tolist()
    eligible = [0, 2, 3]  # masked columns of the window [0, 4)
    low = sorted(entropy[i] for i in eligible)
    gamma = low[0] + low[1] / 2  # admits 2 positions (H1 <= gamma), not 3 (H1 + H2 > gamma)
    chosen = plugin(f"eb_sampler(gamma={gamma})").dllm_remask(state=state, proposal=proposal,
                                                             plan=plan_of(state, 0, 4))
    assert set(cols(chosen)) == eb_reference(entropy, eligible, gamma) == {0, 3}
    # gamma 0 with distinct entropies: only the lowest; a huge budget: the whole window
    for gamma, expected in ((0.0, {0}), (100.0, {0, 2, 3})):
        chosen = plugin(f"eb_sampler(gamma={gamma})").dllm_remask(state=state, proposal=proposal,
                                                                 plan=plan_of(state, 0, 4))
        assert set(cols(chosen)) == expected


def test_eb_sampler_agrees_with_a_plain_reference_on_random_logits():
    g = torch.Generator().manual_seed(0)
    state = start(16, 16, rows=3)
    values = torch.randn(3, 16, V, generator=g, dtype=torch.float64) * torch.rand(3, 16, 1, generator=g) * 6
    proposal = propose(state, values)
    entropy = ops.entropy(values)
    for gamma in (0.0, 0.001, 0.1, 1.0, 5.0):
        chosen = plugin(f"eb_sampler(gamma={gamma})").dllm_remask(state=state, proposal=proposal,
                                                                 plan=plan_of(state, 0, 16))
        for row in range(3):
            assert set(cols(chosen, row)) == eb_reference(entropy[row].tolist(), list(range(16)), gamma)


# ------------------------------------------------------------------------------------------
# WINO
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("G, sure, expected", [(8, 7, 5), (16, 12, 11), (40, 30, 20), (8, 0, 1), (8, 3, 3)])
def test_wino_draft_commits_above_threshold_capped(G, sure, expected):
    state = start(G, G)
    conf = [0.61 + 0.005 * i if i < sure else 0.2 + 0.001 * i for i in range(G)]
    wino = plugin("wino")
    draft = wino.draft(state, with_confidence(state, [conf]), plan_of(state, 0, G))
    # the cap keeps the most confident; with none above 0.6, the single most confident
    top = sorted(range(G), key=lambda i: -conf[i])[:expected]
    assert set(cols(draft)) == set(top)


def _verify_case(previous_cols: list[int], shadow: dict[int, float], draft_sure: int):
    """Block [0, 16); columns 0-4 committed (the previous step's at ``previous_cols``), shadow
    probabilities of their tokens as given; ``draft_sure`` masked columns above 0.6."""
    tokens = {c: 2 + c for c in range(5)}
    at = {c: 1 if c in previous_cols else 0 for c in range(5)}
    state = committed(start(16, 16), tokens, at, step=2)
    plan = plan_of(state, 0, 16)
    wino = plugin("wino")
    wino.dllm_start(state=state, model=fake())
    columns = torch.arange(16)[None, :]
    probs = [shadow.get(c, 0.5) for c in range(16)]
    shadow_logits = torch.stack([peaked(p, token=tokens.get(c, 2)) for c, p in enumerate(probs)])[None]
    wino.shadow = wino.shadow_probability(state, plan, columns, torch.ones_like(columns, dtype=torch.bool),
                                          shadow_logits)
    wino.shadow_step = state.step
    conf = [0.0] * 5 + [0.7] * draft_sure + [0.1] * (11 - draft_sure)
    return wino.dllm_remask(state=state, proposal=with_confidence(state, [conf]), plan=plan)


def test_wino_verify_remasks_exactly_the_weak_earlier_commits_capped_as_the_authors_cap():
    shadow = {0: 0.95, 1: 0.5, 2: 0.8, 3: 0.2, 4: 0.99}  # below 0.9: columns 1, 2, 3
    # 3 weak >= 3 committed by the previous step: only the 3 - 1 lowest (columns 3 and 1)
    commit = _verify_case(previous_cols=[2, 3, 4], shadow=shadow, draft_sure=2)
    assert isinstance(commit, Commit) and cols(commit.mask) == [5, 6]
    assert cols(commit.revoke) == [1, 3]
    # 3 weak < 4 committed by the previous step: all of them
    commit = _verify_case(previous_cols=[1, 2, 3, 4], shadow=shadow, draft_sure=2)
    assert cols(commit.revoke) == [1, 2, 3]
    # a draft of one commits verifies nothing
    commit = _verify_case(previous_cols=[1, 2, 3, 4], shadow=shadow, draft_sure=0)
    assert cols(commit.mask) == [5] and not commit.revoke.any()
    # the previous step committed one: 1 - 1 = 0 may go
    commit = _verify_case(previous_cols=[4], shadow=shadow, draft_sure=3)
    assert not commit.revoke.any()


def test_wino_shadow_mask_hides_the_counterpart_and_main_never_sees_the_shadow():
    from dllm_second_wave.shadow import allowed_pairs

    visible = torch.tensor([[False, True, True, True, True, True]])  # one pad, N = 6
    counterpart = torch.tensor([[3, 4, 5]])  # shadow j re-predicts main index 3 + j
    valid = torch.tensor([[True, True, False]])  # the third shadow position lies outside its window
    allowed = allowed_pairs(visible, counterpart, valid)[0]
    N = 6
    assert not allowed[:N, N:].any()  # main -> shadow: never
    assert torch.equal(allowed[:N, :N], visible.expand(N, N)[0].expand(N, N))  # main -> main: a plain forward
    for j in range(3):
        expected = visible[0].clone()
        if valid[0, j]:
            expected[3 + j] = False  # its own counterpart
        assert torch.equal(allowed[N + j, :N], expected)
        assert torch.equal(allowed[N + j, N:], valid[0])  # the shadow sees the valid shadow
    assert allowed[N + 0, 4] and allowed[N + 1, 3]  # ... and the other counterparts


def _mid_decode_state(model, G: int = 16) -> DecodeState:
    ids, mask = encode_prompts(model, TEXT_PROMPTS)
    config = DecodeConfig(gen_length=G, block_length=8, mask_id=model.mask_id, fill_id=model.fill_id,
                          eot_ids=model.eot_ids)
    state = DecodeState.start(ids, mask, config)
    response = state.response.clone()
    response[:, :6] = torch.tensor([[20, 21, 22, 23, 24, 25], [30, 31, 32, 33, 34, 35]])
    response[1, 12:] = model.fill_id  # row 1 cut after column 12
    return attrs.evolve(state, response=response, live_length=torch.tensor([G, 12]))


def test_wino_forward_equals_the_plain_forward_on_the_main_positions(tiny):
    state = _mid_decode_state(tiny)
    plan = Plan(window_start=torch.tensor([0, 8]), window_end=torch.tensor([8, 16]), budget=torch.tensor([1, 1]))
    wino = plugin("wino")
    wino.dllm_start(state=state, model=tiny)
    with torch.no_grad():
        ours = wino.dllm_forward(model=tiny, state=state, plan=plan)
        plain = full_forward(tiny, state)
    assert ours.start == plain.start == 0 and ours.values.shape == plain.values.shape
    assert torch.allclose(ours.values, plain.values, atol=1e-10, rtol=0)
    # the same forward gave the shadow's probability of each committed window column's token
    assert (wino.shadow[0, :6] < 1).all() and (wino.shadow[0, 6:] == 1).all()  # masked columns: none
    assert (wino.shadow[1] == 1).all()  # row 1's window [8, 16) holds no committed token yet


def test_a_4d_mask_equal_to_the_padding_mask_gives_the_same_logits(tiny):
    ids, mask = encode_prompts(tiny, TEXT_PROMPTS)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    additive = torch.zeros(mask.shape[0], 1, mask.shape[1], mask.shape[1], dtype=tiny.dtype)
    additive = additive.masked_fill(~mask[:, None, None, :], torch.finfo(tiny.dtype).min)
    with torch.no_grad():
        plain = tiny.logits(ids, attention_mask=mask.long(), position_ids=positions)
        boolean = tiny.logits(ids, attention_mask=mask[:, None, None, :].expand_as(additive), position_ids=positions)
        added = tiny.logits(ids, attention_mask=additive, position_ids=positions)
    assert torch.allclose(plain, boolean, atol=1e-10, rtol=0) and torch.allclose(plain, added, atol=1e-10, rtol=0)


@pytest.mark.parametrize("spec", ["wino+prefix_cache", "dual_cache+wino"])
def test_wino_cannot_combine_with_a_cache(spec):
    with pytest.raises(SpecError, match=r"plugins '(wino|dual_cache)' and '(prefix_cache|wino)' cannot be combined: "
                                        r"WINO owns dllm_forward"):
        build_strategy(spec)


LOOPER_SOURCE = '''
import dllm_strategies
from dllm_strategies import hookimpl, ops
from dllm_strategies.defaults import full_forward


class Looper(dllm_strategies.Plugin):
    """Commits one position per step and takes back every earlier one: never finishes."""

    revocable = True

    @hookimpl
    def dllm_remask(self, state, proposal, plan):
        cols = state.columns[None, :]
        inside = (cols >= plan.window_start[:, None]) & (cols < plan.window_end[:, None])
        return dllm_strategies.Commit(mask=ops.best_mask(proposal.scores, plan.window(state)),
                                      revoke=inside & ~state.masked & state.live)


class PlainForward(dllm_strategies.Plugin):
    """The core's forward, as a plugin that owns dllm_forward."""

    @hookimpl
    def dllm_forward(self, model, state, plan):
        return full_forward(model, state)
'''


def test_a_looping_revocable_plugin_stops_at_max_steps(make_distribution):
    make_distribution("dllm-looper", {"dllm_looper_plugin/__init__.py": LOOPER_SOURCE},
                      {"looper": "dllm_looper_plugin:Looper", "plain_forward": "dllm_looper_plugin:PlainForward"})
    with pytest.raises(StepLimitError, match=r"max_steps=12 .* plugin 'looper' keeps re-masking"):
        decode(fake(), [[5]], strategy="looper", gen_length=8, block_length=4, max_steps=12)
    with pytest.raises(PluginError, match="needs wino's own dllm_forward"):
        decode(fake(), [[5]], strategy="plain_forward!+wino", gen_length=8, block_length=4)


# ------------------------------------------------------------------------------------------
# CreditDecoding
# ------------------------------------------------------------------------------------------
def _credit_expected(steps: list[tuple[torch.Tensor, torch.Tensor]], alpha=0.7, beta=0.8, gamma=0.2) -> torch.Tensor:
    """Fused logits of the last step, from the formula: C = sum_t beta^(T-t) e_t with
    e_t[i, argmax_t(i)] = conf_t(i)^gamma at positions masked at t; l_T + alpha log(1 + C)."""
    total = len(steps)
    credit = torch.zeros_like(steps[0][0], dtype=torch.float64)
    for t, (values, masked) in enumerate(steps):
        probs = torch.softmax(values.double(), -1)
        top, token = probs.max(-1)
        earned = torch.nn.functional.one_hot(token, values.shape[-1]).double() * (top ** gamma * masked)[..., None]
        credit = credit + beta ** (total - 1 - t) * earned
    return steps[-1][0].double() + alpha * torch.log1p(credit)


def test_credit_fused_logits_after_three_steps_equal_the_formula():
    g = torch.Generator().manual_seed(1)
    state = start(8, 4, rows=2)
    credit = plugin("credit")
    credit.dllm_start(state=state, model=fake())
    plan = plan_of(state, 0, 4)
    seen = []
    for step in range(3):
        if step:  # row 0 commits column `step` between forwards: it stops earning credit
            state = committed(state, {step: 3}, step=step)
        values = torch.randn(2, 8, V, generator=g) * 3
        fused = credit.fuse(state, plan, Logits(values=values, start=0))
        seen.append((values[:, :4], state.masked[:, :4]))
    expected = _credit_expected(seen)
    assert torch.allclose(fused.values[:, :4].double(), expected, atol=1e-5)
    assert torch.equal(fused.values[:, 4:], values[:, 4:])  # outside the window: unchanged
    assert int(credit.forwards[0]) == 3

    # the window moves to the next block: the credit starts again, without decay
    values = torch.randn(2, 8, V, generator=g) * 3
    moved = credit.fuse(state, plan_of(state, 4, 8), Logits(values=values, start=0))
    assert torch.allclose(moved.values[:, 4:].double(), _credit_expected([(values[:, 4:], state.masked[:, 4:])]),
                          atol=1e-5)
    assert torch.equal(moved.values[:, :4], values[:, :4])

    # row 0 finished: only row 1 is live, and only its credit changes
    kept = credit.credit[0].clone()
    alone = state.take(torch.tensor([1]))
    later = torch.randn(1, 8, V, generator=g) * 3
    fused_alone = credit.fuse(alone, plan_of(alone, 4, 8), Logits(values=later, start=0))
    assert torch.equal(credit.credit[0], kept)
    ref = _credit_expected([(values[1:, 4:], state.masked[1:, 4:]), (later[:, 4:], alone.masked[:, 4:])])
    assert torch.allclose(fused_alone.values[:, 4:].double(), ref, atol=1e-5)


def test_credit_fuses_logits_that_start_past_column_zero():
    g = torch.Generator().manual_seed(2)
    state = start(8, 4)
    credit = plugin("credit")
    credit.dllm_start(state=state, model=fake())
    values = torch.randn(1, 4, V, generator=g)  # a cached forward: columns 4..7 only
    fused = credit.fuse(state, plan_of(state, 4, 8), Logits(values=values, start=4))
    assert fused.start == 4
    assert torch.allclose(fused.values.double(), _credit_expected([(values, state.masked[:, 4:])]), atol=1e-5)


def test_credit_commits_at_min_of_tau_and_best():
    state = start(8, 8)
    credit = plugin("credit(tau=0.9)")
    cases = [([0.95, 0.92, 0.5, 0.3, 0.89, 0.1, 0.1, 0.1], [0, 1]),
             ([0.5, 0.5 + 5e-6, 0.2, 0.1, 0.5 - 2e-5, 0.1, 0.1, 0.1], [0, 1]),
             ([0.5, 0.49, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1], [0])]
    for conf, expected in cases:
        proposal = attrs.evolve(propose(state, peaked([conf])), confidence=torch.tensor([conf], dtype=torch.float64))
        assert cols(credit.dllm_remask(state=state, proposal=proposal, plan=plan_of(state, 0, 8))) == expected


# ------------------------------------------------------------------------------------------
# LocalLeap
# ------------------------------------------------------------------------------------------
def test_local_leap_relaxes_only_inside_the_radius_of_an_anchor():
    state = committed(start(16, 16), {12: 2})
    conf = [0.3] * 16
    conf[5] = 0.95  # the anchor
    conf[1] = conf[9] = 0.8  # distance 4: relaxed threshold 0.75 applies
    conf[0] = conf[10] = 0.8  # distance 5: need 0.9
    conf[6] = 0.7  # near, but below the relaxed threshold
    conf[12] = 0.99  # committed: not an anchor (its neighbours stay masked)
    conf[13] = conf[14] = 0.8
    proposal = attrs.evolve(with_confidence(state, [conf]), confidence=torch.tensor([conf], dtype=torch.float64))
    leap = plugin("local_leap")
    chosen = leap.dllm_remask(state=state, proposal=proposal, plan=plan_of(state, 0, 16))
    assert cols(chosen) == [1, 5, 9]
    # no anchor: only the best-scored position, whatever the relaxed threshold
    conf[5] = 0.85
    proposal = attrs.evolve(with_confidence(state, [conf]), confidence=torch.tensor([conf], dtype=torch.float64))
    assert cols(leap.dllm_remask(state=state, proposal=proposal, plan=plan_of(state, 0, 16))) == [5]
    # radius 0: anchors only
    conf[5] = 0.95
    proposal = attrs.evolve(with_confidence(state, [conf]), confidence=torch.tensor([conf], dtype=torch.float64))
    assert cols(plugin("local_leap(radius=0)").dllm_remask(state=state, proposal=proposal,
                                                           plan=plan_of(state, 0, 16))) == [5]


# ------------------------------------------------------------------------------------------
# KLASS
# ------------------------------------------------------------------------------------------
def _klass_steps(klass, values_per_step: list[torch.Tensor], budgets: list[int] | None = None) -> list[list[int]]:
    """Run KLASS's remask on the same (all-masked) block for several steps; committed columns
    (``budgets`` collects the schedule's budget of each step)."""
    state = start(8, 8)
    out = []
    for t, values in enumerate(values_per_step):
        at = attrs.evolve(state, step=t, window_start=torch.tensor([0 if t else -1]), window_steps=torch.tensor([t]))
        plan = semi_ar_plan(at)
        chosen = klass.dllm_remask(state=at, proposal=propose(at, values), plan=plan)
        out.append(cols(chosen))
        if budgets is not None:
            budgets.append(int(plan.budget[0]))
    return out


@pytest.mark.parametrize("history", [1, 2, 3])
def test_klass_commits_nothing_by_its_rule_before_history_stable_steps(history):
    klass = plugin(f"klass(history={history})")
    klass.dllm_start(state=start(8, 8), model=fake())
    # 0.5999 is not above conf=0.6 (exactly 0.6 would be a rounding coin toss: softmax gives 0.6000000000000001)
    steady = peaked([[0.9, 0.95, 0.9, 0.9, 0.3, 0.3, 0.5999, 0.3]])
    budgets: list[int] = []
    steps = _klass_steps(klass, [steady] * (history + 2), budgets)
    ranking = [1, 0, 2, 3, 6, 4, 5, 7]  # by confidence, ties to the lower column
    # before `history` KL values exist: LLaDA's top-k of the schedule's budget, nothing more
    assert steps[:history] == [sorted(ranking[:k]) for k in budgets[:history]]
    assert steps[history:] == [[0, 1, 2, 3]] * 2


def test_klass_kl_history_is_the_divergence_between_steps_and_unstable_positions_fall_back():
    klass = plugin("klass")
    klass.dllm_start(state=start(8, 8), model=fake())
    first = peaked([[0.9] * 8])
    second = peaked([[0.9] * 4 + [0.8] * 4])
    third = peaked([[0.9] * 4 + [0.95] * 4])
    steps = _klass_steps(klass, [first, second, third])
    p = torch.softmax(third[0], -1)
    q = torch.softmax(second[0], -1)
    kl = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(klass.kls[0, :, -1].double(), kl, atol=1e-5)
    assert torch.isinf(klass.kls[0, :, 0]).logical_not().all()  # two KLs exist by step 2
    # columns 0-3 never moved and are confident; 4-7 moved by more than 0.015
    assert kl[4:].min() > 0.015 and steps[2] == [0, 1, 2, 3]


def test_klass_falls_back_to_the_top_k_schedule_when_nothing_is_stable():
    klass = plugin("klass")
    klass.dllm_start(state=start(8, 8), model=fake())
    a, b = peaked([[0.9] * 8]), peaked([[0.9] * 8], token=3)  # the argmax flips every step
    budgets: list[int] = []
    steps = _klass_steps(klass, [a, b, a, b], budgets)
    assert [len(s) for s in steps] == budgets


# ------------------------------------------------------------------------------------------
# Prophet
# ------------------------------------------------------------------------------------------
def _prophet_step(prophet, state: DecodeState, values: torch.Tensor, taken: int, budget: int = 1):
    at = attrs.evolve(state, taken=torch.tensor([taken] * state.batch_size), step=taken)
    commit = prophet.dllm_remask(state=at, proposal=propose(at, values), plan=plan_of(at, 0, 4, budget))
    return commit


def test_prophet_fills_the_whole_row_on_the_step_the_gap_clears_the_threshold_and_not_before():
    state = committed(start(12, 4, steps=12), {0: 3})
    prophet = plugin("prophet")
    prophet.dllm_start(state=state, model=fake())
    masked = cols(state.masked)
    # early phase (step / steps < 1/3): threshold 7.5 on the mean gap over the masked positions
    for taken, gap in ((0, 5.0), (1, 7.4)):
        commit = _prophet_step(prophet, state, gapped([[0.0] + [gap] * 11]), taken)
        assert cols(commit.mask) == [1]  # the schedule's top-1 of the block, nothing more
    commit = _prophet_step(prophet, state, gapped([[0.0] + [7.5] * 11]), 2)
    assert cols(commit.mask) == masked  # the whole row, outside the block too
    # middle phase: 5.0; late phase: 2.5
    assert cols(_prophet_step(prophet, state, gapped([[0.0] + [4.9] * 11]), 4).mask) == [1]
    assert cols(_prophet_step(prophet, state, gapped([[0.0] + [5.0] * 11]), 4).mask) == masked
    assert cols(_prophet_step(prophet, state, gapped([[0.0] + [2.4] * 11]), 8).mask) == [1]
    assert cols(_prophet_step(prophet, state, gapped([[0.0] + [2.5] * 11]), 8).mask) == masked
    # the mean: one low position pulls it under
    mixed = [[0.0] + [8.0] * 10 + [0.0]]
    assert cols(_prophet_step(prophet, state, gapped(mixed), 0).mask) == [1]
    # unanchored='off': never exits
    off = plugin("prophet(unanchored='off')")
    off.dllm_start(state=state, model=fake())
    assert cols(_prophet_step(off, state, gapped([[0.0] + [50.0] * 11]), 0).mask) == [1]


def _tokenized_model():
    from dllm_arith.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    return types.SimpleNamespace(tokenizer=tokenizer, vocab_size=len(tokenizer), name="task"), tokenizer


def test_prophet_marker_mode_watches_the_positions_after_the_committed_marker():
    model, tokenizer = _tokenized_model()
    VT = model.vocab_size
    marker = tokenizer.convert_tokens_to_ids("####")
    prophet = plugin("prophet(marker='####')")
    base = start(12, 4, steps=12)
    prophet.dllm_start(state=base, model=model)
    high_after = gapped([[0.0] * 4 + [9.0] * 5 + [0.0] * 3], vocab=VT)  # columns 4..8
    high_elsewhere = gapped([[9.0] * 4 + [0.0] * 5 + [9.0] * 3], vocab=VT)
    before = committed(base, {0: 20})
    assert cols(_prophet_step(prophet, before, high_after, 0).mask) == [1]  # no marker yet: no window
    with_marker = committed(base, {0: 20, 3: marker})
    assert cols(_prophet_step(prophet, with_marker, high_elsewhere, 0).mask) == [1]
    assert cols(_prophet_step(prophet, with_marker, high_after, 0).mask) == cols(with_marker.masked)


def test_prophet_anchor_mode_pins_the_phrase_at_step_zero_and_watches_after_it():
    model, tokenizer = _tokenized_model()
    VT = model.vocab_size
    prophet = plugin("prophet(anchor='the answer is', anchor_at=2)")
    state = start(12, 4, steps=12)
    prophet.dllm_start(state=state, model=model)
    anchor = tokenizer("the answer is", add_special_tokens=False)["input_ids"]
    values = gapped([[0.0] * 12], vocab=VT) + torch.linspace(0, 1, VT)  # no exit: small gaps
    commit = _prophet_step(prophet, state, values, 0, budget=1)
    assert cols(commit.mask) == [0, 2, 3, 4]  # the block's top-1 (not a pinned column) + the anchor
    assert commit.tokens[0, 2:5].tolist() == anchor
    pinned = committed(state, dict(zip([2, 3, 4], anchor, strict=True)), step=1)
    watched = gapped([[0.0] * 5 + [9.0] * 5 + [0.0] * 2], vocab=VT)  # columns 5..9 after the anchor
    assert cols(_prophet_step(prophet, pinned, watched, 1).mask) == cols(pinned.masked)
    elsewhere = gapped([[9.0] * 5 + [0.0] * 5 + [9.0] * 2], vocab=VT)
    assert cols(_prophet_step(prophet, pinned, elsewhere, 1).mask) == [0]


def test_prophet_rejects_anchors_that_do_not_fit_or_do_not_tokenize():
    model, _ = _tokenized_model()
    state = start(12, 4)
    with pytest.raises(ConfigError, match="needs gen_length >= 18"):
        plugin("prophet(anchor='the answer is', anchor_at=10)").dllm_start(state=state, model=model)
    with pytest.raises(ConfigError, match="not a single token"):
        plugin("prophet(marker='qqq')").dllm_start(state=state, model=model)
    with pytest.raises(ConfigError, match="unknown or mask token"):
        plugin("prophet(anchor='The answer is', anchor_at=0)").dllm_start(state=state, model=model)
    with pytest.raises(ConfigError, match="needs a model with a tokenizer"):
        plugin("prophet(marker='####')").dllm_start(state=state, model=fake())
    with pytest.raises(SpecError, match="are both set"):
        build_strategy("prophet(anchor='the answer is', marker='####')")
    with pytest.raises(SpecError, match="cannot be combined"):
        build_strategy("prophet+dual_cache")


# ------------------------------------------------------------------------------------------
# Options, the invariant kit, end to end
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["eb_sampler(gamma=-1)", "wino(draft=1.5)", "wino(verify=-0.1)",
                                  "prophet(answer_length=0)", "prophet(unanchored='sometimes')",
                                  "credit(beta=1.5)", "credit(gamma=0)", "local_leap(relaxed=0.95)",
                                  "local_leap(radius=-1)", "klass(history=0)", "klass(conf='high')"])
def test_bad_options_are_rejected_when_the_spec_is_parsed(spec):
    with pytest.raises(SpecError, match=re.escape(spec.split("(")[0])):
        build_strategy(spec)


def test_defaults_are_the_authors():
    defaults = {
        "eb_sampler": {"gamma": 0.1}, "wino": {"draft": 0.6, "verify": 0.9},
        "prophet": {"early": 7.5, "mid": 5.0, "late": 2.5, "answer_length": 5, "anchor_at": 200},
        "credit": {"tau": 0.9, "alpha": 0.7, "beta": 0.8, "gamma": 0.2},
        "local_leap": {"tau": 0.9, "relaxed": 0.75, "radius": 4},
        "klass": {"conf": 0.6, "kl": 0.015, "history": 2},
    }
    for name, values in defaults.items():
        options = plugin(name).options
        assert {key: getattr(options, key) for key in values} == values
        assert "arXiv" in type(plugin(name)).__doc__


@pytest.mark.parametrize("spec", SPECS)
def test_each_plugin_passes_the_invariant_kit(spec):
    check_strategy_property(spec, max_examples=8)


@pytest.mark.parametrize("spec", [*SPECS, "prophet(marker='####')", "prophet(anchor='the answer is', anchor_at=4)",
                                  "credit+gumbel(temperature=0.5)", "eb_sampler(gamma=0.001)+margin"])
def test_decodes_end_to_end_on_a_tiny_model(tiny32, spec):
    with torch.no_grad():
        result = decode(tiny32, TEXT_PROMPTS, strategy=spec, gen_length=16, block_length=8)
    assert not (result.tokens == tiny32.mask_id).any()
    assert (result.forced == 0).all()  # every step's commit was the strategy's own
    assert len(result.text) == 2 and (result.steps >= 2).all()
    if "anchor" in spec:
        anchor = tiny32.tokenizer("the answer is", add_special_tokens=False)["input_ids"]
        assert result.tokens[:, 4:7].tolist() == [anchor, anchor]


def test_wino_revokes_on_a_real_model_and_still_finishes(tiny32):
    """On a real (random) model the verify step does take tokens back, and the run ends."""
    revoked = 0
    from dllm_strategies.decode import Run

    ids, mask = encode_prompts(tiny32, TEXT_PROMPTS)
    config = DecodeConfig(gen_length=32, block_length=32, mask_id=tiny32.mask_id, fill_id=tiny32.fill_id,
                          eot_ids=tiny32.eot_ids)
    strategy = build_strategy("wino(draft=0.01, verify=0.9)")
    with torch.no_grad():
        run = Run.begin(strategy, tiny32, DecodeState.start(ids, mask, config))
        while not run.done:
            record = run.step()
            if record.commit.revoke is not None:
                revoked += int(record.commit.revoke.sum())
    assert revoked > 0
    assert not run.state.masked.any() and run.state.step <= config.max_steps


# ------------------------------------------------------------------------------------------
# Docs
# ------------------------------------------------------------------------------------------
def test_docs_have_a_section_per_plugin_naming_every_option():
    text = (Path(__file__).parent.parent / "docs" / "second-wave.md").read_text()
    for name in SPECS:
        match = re.search(rf"^## `{name}`.*?(?=^## |\Z)", text, flags=re.M | re.S)
        assert match, f"docs/second-wave.md lacks a '## `{name}`' section"
        for field in attrs.fields(type(plugin(name).options)):
            assert f"`{field.name}`" in match.group(0), f"{name}: option {field.name} undocumented"
        for topic in ("Rule", "Options", "Paper", "State", "Hooks", "Combines"):
            assert f"**{topic}" in match.group(0), f"{name}: no '{topic}' paragraph"


def test_math_helpers_of_the_tests():
    # the hand-made logits mean what the tests say
    assert math.isclose(float(ops.confidence(peaked([0.7]), torch.tensor([2]))[0]), 0.7, rel_tol=1e-9)
    top = gapped([3.0]).topk(2, dim=-1).values[0]
    assert float(top[0] - top[1]) == 3.0
