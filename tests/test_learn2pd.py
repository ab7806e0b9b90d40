"""Learn2PD (arXiv 2509.25188) plugins: the EGP oracle, the learned filter and its training
command, End-of-Text truncation."""

from __future__ import annotations

import json

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dllm_strategies import ConfigError, ModelError, PluginError, SpecError, build_strategy, decode
from dllm_strategies.decode import Run, encode_prompts
from dllm_strategies.state import DecodeConfig, DecodeState, Logits, Plan, Proposal
from dllm_strategies.testing import FakeModel, ScriptedLogits, check_strategy, check_strategy_property
from dllm_strategies.testing.invariants import check_result, check_step, decode_shapes, fake_models

from dllm_learn2pd import filter_model
from dllm_learn2pd.eot import eot_cut
from dllm_learn2pd.features import SETTLED, block_confidences, place_block, top1_confidence
from dllm_learn2pd.filter_model import FilterMLP, load_filter, save_filter
from dllm_learn2pd.reference import REFERENCES
from dllm_learn2pd.training import FilterTraining, OracleSteps, collect, fit

MASK, EOT = 0, 1
QUICK = settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------
# Hand-made fake models
# ------------------------------------------------------------------------------------------
def chain_model(prompt_length: int, vocab: int = 12) -> FakeModel:
    """Predicts a position's token only once its left neighbour is decoded: ``6 + column % 3``
    with confidence 0.97 after a decoded neighbour, the filler token 5 with confidence 0.2
    after a mask.  Decoding it one token per step commits left to right."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        column = torch.arange(T) - prompt_length
        sure = torch.roll(ids, 1, dims=1) != MASK
        token = torch.where(sure, 6 + column.remainder(3)[None, :], torch.tensor(5))
        out = torch.zeros(B, T, vocab, dtype=torch.float64)
        return out.scatter(2, token[..., None], torch.where(sure, 6.0, 1.0).double()[..., None])

    return FakeModel(logits_fn=logits, vocab_size=vocab, mask_id=MASK, eot_ids=(EOT,), fill_id=EOT)


def constant_model(predictions: torch.Tensor, prompt_length: int, vocab: int = 12,
                   strength: float = 4.0) -> FakeModel:
    """Predicts ``predictions[column]`` at every response column whatever the input."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        columns = (torch.arange(T) - prompt_length).clamp(0, predictions.numel() - 1)
        out = torch.zeros(B, T, vocab, dtype=torch.float64)
        return out.scatter(2, predictions[columns][None, :, None].expand(B, T, 1),
                           torch.full((B, T, 1), strength, dtype=torch.float64))

    return FakeModel(logits_fn=logits, vocab_size=vocab, mask_id=MASK, eot_ids=(EOT,), fill_id=EOT)


def ending_model(prompt_length: int, vocab: int = 16) -> FakeModel:
    """The first prompt token ``c`` says where the answer ends: response columns >= c predict
    end-of-text, most confidently at c; earlier columns predict the word ``2 + column % 4``."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        column = (torch.arange(T) - prompt_length)[None, :].expand(B, T)
        end = ids[:, :1]
        ending = column >= end
        token = torch.where(ending, torch.tensor(EOT), 2 + column.remainder(4))
        strength = torch.where(ending, 8.0 - 0.25 * (column - end), 3.0 + 0.1 * column).double()
        out = torch.zeros(B, T, vocab, dtype=torch.float64)
        return out.scatter(2, token[..., None], strength[..., None])

    return FakeModel(logits_fn=logits, vocab_size=vocab, mask_id=MASK, eot_ids=(EOT,), fill_id=EOT)


def fresh(model: FakeModel) -> FakeModel:
    return attrs.evolve(model, calls=[])


def stepped(spec: str, model: FakeModel, prompts, *, gen_length: int, block_length: int, steps=None,
            reference: torch.Tensor | None = None, seed: int = 0):
    """Run ``spec`` step by step with the invariant kit's per-step checks.

    Returns the strategy, the step records, the result, the config and the final live lengths."""
    strategy = build_strategy(spec)
    ids, mask = encode_prompts(model, prompts)
    config = DecodeConfig(gen_length=gen_length, block_length=block_length, steps=steps, mask_id=model.mask_id,
                          fill_id=model.fill_id, eot_ids=model.eot_ids, seed=seed)
    state = DecodeState.start(ids, mask, config, reference=reference)
    prompt = state.prompt.clone()
    run = Run.begin(strategy, model, state)
    records = []
    while not run.done:
        records.append(run.step())
        check_step(strategy, records[-1], prompt)
    return strategy, records, run.result(), config, run.state.live_length


# ------------------------------------------------------------------------------------------
# EGP oracle
# ------------------------------------------------------------------------------------------
def _committed_off_reference(records, reference: torch.Tensor) -> torch.Tensor:
    """Per step: committed positions (not cut since) whose token differs from the reference."""
    return torch.stack([(r.commit.mask & r.after.live & (r.after.response != reference.index_select(0, r.rows))).sum()
                        for r in records])


def test_oracle_commits_every_match_and_nothing_else_on_a_chain():
    model = chain_model(prompt_length=2)
    reference = torch.tensor([[6, 7, 8, 6, 7, 8, 6, 7]])
    _, records, result, _, _ = stepped("egp_oracle(reference=given)", fresh(model), [[3, 4]], gen_length=8,
                                       block_length=4, reference=reference)
    assert torch.equal(result.tokens, reference)
    # The model finds one more reference token per step: every commit is a match, no stall, no copy.
    for record in records:
        assert int(record.commit.mask.sum()) == 1
        assert torch.equal(record.commit.mask & (record.proposal.tokens == reference), record.commit.mask)
    assert result.steps.tolist() == [8] and result.forced.tolist() == [0]


def test_oracle_copies_the_reference_when_the_block_stalls():
    predictions = torch.tensor([6, 7, 8, 9, 6, 7, 8, 9])
    reference = torch.tensor([[6, 3, 8, 3, 2, 2, 2, 2]])  # block 0: 2 matches; block 1: none
    model = constant_model(predictions, prompt_length=2)
    _, records, result, _, _ = stepped("egp_oracle(reference=given)", fresh(model), [[3, 4]], gen_length=8,
                                    block_length=4, reference=reference)
    assert torch.equal(result.tokens, reference)
    # Step 0 commits the two matches.  Step 1's block argmax is identical to step 0's: the
    # authors' stall, so the reference is copied (it matches nothing, which is how it is seen).
    # Block 1 matches nothing at its first step: the authors' loop would spend one more forward to
    # see the same argmax, the oracle copies at once.
    assert result.commit_step.tolist() == [[0, 1, 0, 1, 2, 2, 2, 2]]
    assert result.steps.tolist() == [3] and result.forwards == 3 and result.forced.tolist() == [0]
    copied = [int((r.commit.mask & (r.proposal.tokens != reference)).sum()) for r in records]
    assert copied == [0, 2, 4]


def test_oracle_does_not_stall_while_it_finds_matches():
    # The chain model's argmax changes at every step and one more position matches each time, so
    # nothing is ever copied although the rest of the block disagrees with the reference.
    model = chain_model(prompt_length=1)
    reference = torch.tensor([[6, 7, 8, 6]])
    _, records, _, _, _ = stepped("egp_oracle(reference=given)", fresh(model), [[3]], gen_length=4,
                               block_length=4, reference=reference)
    assert [int((r.commit.mask & (r.proposal.tokens != reference)).sum()) for r in records] == [0, 0, 0, 0]


@st.composite
def _oracle_case(draw):
    shape = draw(decode_shapes())
    B, G = len(shape["prompts"]), shape["gen_length"]
    tokens = draw(st.lists(st.integers(1, 23), min_size=B * G, max_size=B * G))
    return shape, torch.tensor(tokens).view(B, G)


@QUICK
@given(model=fake_models(), case=_oracle_case(), eot=st.booleans())
def test_oracle_keeps_the_promises_with_a_given_reference(model, case, eot):
    # The kit's check_strategy_property cannot pass a reference, so the same per-step and per-run
    # checks run here on a stepped run with one.
    shape, reference = case
    spec = "egp_oracle(reference=given)" + ("+eot" if eot else "")
    used = fresh(model)
    strategy, records, result, config, live = stepped(spec, used, reference=reference, **shape)
    check_result(strategy, result, used, config)
    assert int(_committed_off_reference(records, reference).sum()) == 0
    assert int(result.forced.sum()) == 0
    # The output is the reference up to each row's cut, end-of-text after it.
    kept = torch.arange(config.gen_length)[None, :] < live[:, None]
    assert torch.equal(result.tokens, torch.where(kept, reference, EOT))
    if not eot:
        assert torch.equal(result.tokens, reference)
    again = decode(fresh(model), shape["prompts"], strategy=spec, reference=reference,
                   gen_length=shape["gen_length"], block_length=shape["block_length"], steps=shape["steps"])
    assert torch.equal(again.tokens, result.tokens)
    for i, prompt in enumerate(shape["prompts"]):
        alone = decode(fresh(model), [prompt], strategy=spec, reference=reference[i:i + 1],
                       gen_length=shape["gen_length"], block_length=shape["block_length"], steps=shape["steps"])
        assert torch.equal(alone.tokens[0], result.tokens[i])


@QUICK
@given(model=fake_models(), shape=decode_shapes())
def test_oracle_defaults_to_the_models_own_decode_outside_the_runs_cost(model, shape):
    lengths = {"gen_length": shape["gen_length"], "block_length": shape["block_length"]}
    standard = decode(fresh(model), shape["prompts"], steps=shape["gen_length"], **lengths)
    used = fresh(model)
    _, records, result, _, _ = stepped("egp_oracle(cache=false)", used, shape["prompts"], steps=shape["steps"],
                                       **lengths)
    assert torch.equal(result.tokens, standard.tokens)
    assert int(_committed_off_reference(records, standard.tokens).sum()) == 0
    # Only the oracle's own forwards are its cost; the reference decode (one per position) is not.
    assert result.forwards == len(records) == int(result.nfe.max())
    assert len(used.calls) == standard.forwards + result.forwards
    assert result.positions == sum(int(c.attention_mask.sum()) if c.attention_mask is not None
                                   else c.input_ids.numel() for c in used.calls[standard.forwards:])


def test_self_reference_is_computed_once_per_prompt():
    REFERENCES.clear()
    model = FakeModel(logits_fn=ScriptedLogits(20, seed=3), vocab_size=20)
    kwargs = {"gen_length": 8, "block_length": 4, "strategy": "egp_oracle"}
    first = decode(model, [[5, 6, 7], [8, 9]], **kwargs)
    assert len(model.calls) == 8 + first.forwards
    second = decode(model, [[8, 9], [5, 6, 7]], **kwargs)  # both cached, in another order
    assert len(model.calls) == 8 + first.forwards + second.forwards
    assert torch.equal(second.tokens, first.tokens.flip(0))
    third = decode(model, [[8, 9], [4]], **kwargs)  # one new prompt: one reference decode of one row
    assert len(model.calls) == 8 * 2 + first.forwards + second.forwards + third.forwards
    assert model.calls[-third.forwards - 1].input_ids.shape[0] == 1
    REFERENCES.clear()


def test_remembered_references_are_used_and_checked():
    REFERENCES.clear()
    model = FakeModel(logits_fn=ScriptedLogits(20, seed=3), vocab_size=20)
    prompt, mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[False, True, True], [True, True, True]])
    given_answers = torch.tensor([[3, 4, 3, 4], [1, 2, 1, 2]])
    REFERENCES.remember(model, prompt, mask, given_answers, gen_length=4, block_length=4, mask_id=model.mask_id)
    result = decode(model, [[7, 8, 9], [5, 6]], strategy="egp_oracle", gen_length=4, block_length=4)
    assert len(model.calls) == result.forwards  # no reference decode
    assert torch.equal(result.tokens, given_answers.flip(0))
    with pytest.raises(ConfigError, match=r"shape \(2, 8\)"):
        REFERENCES.remember(model, prompt, mask, given_answers, gen_length=8, block_length=4, mask_id=model.mask_id)
    with pytest.raises(ConfigError, match="mask token"):
        REFERENCES.remember(model, prompt, mask, torch.full((2, 4), model.mask_id), gen_length=4, block_length=4,
                            mask_id=model.mask_id)
    REFERENCES.clear()


def test_oracle_on_a_tiny_real_model_reproduces_its_standard_decode(tiny):
    prompts = ["Tom has 3 apples . He buys 2 more . How many apples does Tom have now ?",
               "Ann has 5 eggs . She sells 2 . How many eggs does Ann have now ?"]
    kwargs = {"gen_length": 32, "block_length": 8, "chat": True}
    with torch.inference_mode():
        standard = decode(tiny, prompts, **kwargs)
        oracle = decode(tiny, prompts, strategy="egp_oracle(cache=false)", **kwargs)
    assert torch.equal(oracle.tokens, standard.tokens)
    assert oracle.forwards == int(oracle.nfe.max()) < standard.forwards
    assert int(oracle.forced.sum()) == 0


def test_oracle_errors_name_the_fix():
    model = FakeModel(logits_fn=ScriptedLogits(20), vocab_size=20)
    with pytest.raises(PluginError, match=r"reference=given\) needs a reference .* decode\(\.\.\., reference="):
        decode(model, [[5, 6]], strategy="egp_oracle(reference=given)", gen_length=4, block_length=4)
    with pytest.raises(PluginError, match="use egp_oracle\\(reference=given\\)"):
        decode(model, [[5, 6]], strategy="egp_oracle", reference=torch.full((1, 4), 3), gen_length=4,
               block_length=4)
    with pytest.raises(PluginError, match="holds the mask token .* row 0, response position 2"):
        decode(model, [[5, 6]], strategy="egp_oracle(reference=given)", reference=torch.tensor([[3, 3, MASK, 3]]),
               gen_length=4, block_length=4)
    with pytest.raises(SpecError, match="expected one of 'self', 'given'"):
        build_strategy("egp_oracle(reference=gold)")


# ------------------------------------------------------------------------------------------
# End-of-Text truncation
# ------------------------------------------------------------------------------------------
def _hand_state(response: list[int], commit_step: list[int], step: int, live_length: int | None = None):
    config = DecodeConfig(gen_length=len(response), block_length=len(response), mask_id=MASK, fill_id=EOT)
    state = DecodeState.start(torch.tensor([[4]]), torch.tensor([[True]]), config)
    return attrs.evolve(state, response=torch.tensor([response]), commit_step=torch.tensor([commit_step]),
                        step=step, live_length=torch.tensor([live_length or len(response)]))


def _hand_proposal(tokens: list[int], confidence: list[float]) -> Proposal:
    t = torch.tensor([tokens])
    return Proposal(tokens=t, confidence=torch.tensor([confidence]), scores=torch.zeros(1, len(tokens)),
                    logits=Logits(values=torch.zeros(1, len(tokens), 12)))


def test_eot_rule_cuts_after_the_first_committed_end_of_text():
    # Step 3 committed end-of-text at columns 4 and 6; the one at 2 is older (step 1) and 2 is
    # still masked: the cut goes right after column 4, the first committed *this step*.
    state = _hand_state([5, 5, EOT, MASK, EOT, MASK, EOT, MASK], [0, 0, 1, -1, 3, -1, 3, -1], step=3)
    proposal = _hand_proposal([5, 5, EOT, EOT, EOT, EOT, EOT, EOT], [.9] * 8)
    assert eot_cut(state, proposal).tolist() == [5]
    assert eot_cut(state, proposal, predicted=False).tolist() == [5]


def test_eot_rule_cuts_after_the_most_confident_masked_prediction():
    state = _hand_state([5, MASK, MASK, MASK, MASK, MASK, 7, MASK], [0, -1, -1, -1, -1, -1, 2, -1], step=2)
    proposal = _hand_proposal([5, EOT, 6, EOT, EOT, 6, 7, EOT], [.9, .5, .9, .8, .7, .9, .9, .99])
    assert eot_cut(state, proposal).tolist() == [8]  # the most confident is the last column
    proposal = _hand_proposal([5, EOT, 6, EOT, EOT, 6, 7, EOT], [.9, .5, .9, .8, .7, .9, .9, .6])
    assert eot_cut(state, proposal).tolist() == [4]  # column 3 stays masked, 4.. are cut
    assert eot_cut(state, proposal, predicted=False).tolist() == [8]  # conservative: no committed EoT
    cut = _hand_state([5, MASK, MASK, MASK, MASK, EOT, EOT, EOT], [0, -1, -1, -1, -1, -1, -1, -1], step=2,
                      live_length=5)
    assert eot_cut(cut, _hand_proposal([5, 6, 6, 6, 6, EOT, EOT, EOT], [.9] * 8)).tolist() == [5]


def test_eot_truncation_shrinks_the_forward_in_a_batch_that_ends_at_different_points():
    model = ending_model(prompt_length=2)
    prompts = [[3, 9], [9, 9], [12, 9]]  # ends at column 3, 9, and never (12 >= gen length)
    kwargs = {"gen_length": 12, "block_length": 4}
    plain = decode(fresh(model), prompts, **kwargs)
    used = fresh(model)
    strategy, records, result, config, _ = stepped("eot", used, prompts, **kwargs)
    check_result(strategy, result, used, config)
    # Every output position behind the first end-of-text is end-of-text.
    for row, end in zip(result.tokens, (3, 9, 12), strict=True):
        assert (row[:end] != EOT).all() and (row[end:] == EOT).all()
    assert torch.equal(result.tokens, plain.tokens)
    # Live lengths never grow, and the rows were cut where they end, after the very first step.
    lengths = [r.after.live_length.tolist() for r in records]
    assert lengths[0] == [4, 10, 12]
    # The model really saw fewer positions: inputs narrow to the longest live row, the cut
    # positions are out of attention, and rows leave the batch when they finish.
    fed = [int(c.attention_mask.sum()) if c.attention_mask is not None else c.input_ids.numel() for c in used.calls]
    assert fed[0] == 3 * (2 + 12) and fed[1] == 3 * 2 + 4 + 10 + 12
    assert all(a >= b for a, b in zip(fed, fed[1:]))
    assert result.positions == sum(fed) < plain.positions
    assert result.steps.tolist() == [4, 10, 12] and plain.steps.tolist() == [12, 12, 12]
    assert int(used.calls[-1].input_ids.shape[0]) == 1  # only the row that never ends is left
    # When every row is cut, the input itself is narrower: prompt + the longest live row.
    both = fresh(model)
    decode(both, prompts[:2], strategy="eot", **kwargs)
    assert [c.input_ids.shape[1] for c in both.calls[:2]] == [2 + 12, 2 + 10]


def test_eot_conservative_variant_waits_for_a_committed_end_of_text():
    model = ending_model(prompt_length=1)
    result = decode(fresh(model), [[3], [6]], strategy="eot(cut=committed)", gen_length=8, block_length=8)
    predicted = decode(fresh(model), [[3], [6]], strategy="eot", gen_length=8, block_length=8)
    assert torch.equal(result.tokens, predicted.tokens)
    # Low-confidence decoding commits the confident end-of-text at column 3 (or 6) first, so the
    # conservative cut comes at the first step too: the rows end after 4 and 7 steps, not 8.
    assert result.commit_step[0, 3] == 0 and result.steps.tolist() == [4, 7]


@pytest.mark.parametrize("remasker", ["threshold(tau=0.7)", "entropy_threshold(tau=0.8)", "topk(k=2)", "margin",
                                      "random", "gumbel(temperature=1.0)"])
def test_eot_composes_with_baselines(remasker):
    # tests/test_invariant_kit.py also runs every valid pair of first-party plugins, eot's included.
    check_strategy_property(f"eot+{remasker}", max_examples=4)
    check_strategy_property(f"eot(cut=committed)+{remasker}", max_examples=2)


def test_eot_alone_keeps_the_promises():
    check_strategy_property("eot", max_examples=15)
    check_strategy_property("eot(cut=committed)", max_examples=8)


@QUICK
@given(model=fake_models(), shape=decode_shapes())
def test_after_eot_everything_behind_the_first_end_of_text_is_end_of_text(model, shape):
    used = fresh(model)
    _, _, result, _, _ = stepped("eot", used, **shape)
    for row in result.tokens:
        ends = (row == EOT).nonzero()
        if ends.numel():
            assert (row[int(ends[0]):] == EOT).all()
    widths = [c.input_ids.shape[1] for c in used.calls]
    assert all(a >= b for a, b in zip(widths, widths[1:]))


def test_eot_on_a_tiny_real_model_processes_fewer_positions(tiny):
    prompt = "Tom has 3 apples . He buys 2 more . How many apples does Tom have now ?"
    kwargs = {"gen_length": 32, "block_length": 8, "chat": True}
    with torch.inference_mode():
        words = torch.randint(7, tiny.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
        reference = torch.where(torch.arange(32)[None, :] < torch.tensor([[10], [20]]), words, tiny.fill_id)
        plain = decode(tiny, [prompt, prompt], strategy="egp_oracle(reference=given)", reference=reference, **kwargs)
        cut = decode(tiny, [prompt, prompt], strategy="egp_oracle(reference=given)+eot(cut=committed)",
                     reference=reference, **kwargs)
    assert torch.equal(cut.tokens, reference) and torch.equal(plain.tokens, reference)
    assert cut.positions < plain.positions


# ------------------------------------------------------------------------------------------
# Learned filter: features, accept rule, file, plugin
# ------------------------------------------------------------------------------------------
def _logits_with_top1(top1: list[list[float]], vocab: int = 5) -> torch.Tensor:
    """(B, W, V) logits whose softmax puts ``p`` on token 2 and spreads the rest evenly."""
    p = torch.tensor(top1, dtype=torch.float64)
    probs = ((1 - p) / (vocab - 1))[..., None].expand(*p.shape, vocab).clone()
    probs[..., 2] = p
    return probs.log()


def test_features_are_top1_confidences_of_the_block_on_hand_made_logits():
    values = _logits_with_top1([[0.9, 0.5, 0.3, 0.95, 0.6, 0.7], [0.4, 0.8, 0.99, 0.2, 0.6, 0.25]])
    assert torch.allclose(top1_confidence(values), torch.tensor([[0.9, 0.5, 0.3, 0.95, 0.6, 0.7],
                                                                [0.4, 0.8, 0.99, 0.2, 0.6, 0.25]],
                                                               dtype=torch.float64))
    logits = Logits(values=values, start=2)  # the logits cover response columns 2..7 of 10
    features = block_confidences(logits, start=torch.tensor([0, 4]), width=4, live_length=torch.tensor([10, 7]),
                                 gen_length=10)
    expected = torch.tensor([[SETTLED, SETTLED, 0.9, 0.5],    # columns 0, 1 not covered: settled
                             [0.99, 0.2, 0.6, SETTLED]])      # column 7 is cut (live length 7)
    assert features.dtype == torch.float32 and torch.allclose(features, expected)
    placed = place_block(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 3]), 5, 0.0)
    assert placed.tolist() == [[0, 1, 2, 0, 0], [0, 0, 0, 3, 4]]


def _threshold_filter(path, width: int, above: float = 0.98):
    """A hand-set filter accepting exactly the positions whose own confidence exceeds ``above``:
    logit_i = 40 (c_i - above) + ln(0.96 / 0.04), so sigmoid > 0.96 iff c_i > above."""
    network = FilterMLP(width, width)
    with torch.no_grad():
        network.inner.weight.copy_(torch.eye(width))
        network.inner.bias.zero_()
        network.outer.weight.copy_(40.0 * torch.eye(width))
        network.outer.bias.fill_(-40.0 * above + float(torch.log(torch.tensor(0.96 / 0.04))))
    save_filter(network, path, threshold=0.96, training={"hand_set": True})
    return path


def test_filter_accepts_above_threshold_and_adds_the_baseline_top_k(tmp_path):
    path = _threshold_filter(tmp_path / "f.safetensors", width=4)
    plugin = build_strategy(f"learned_filter(path='{path}')").plugins["learned_filter"]
    config = DecodeConfig(gen_length=8, block_length=4, mask_id=MASK, fill_id=EOT)
    state = DecodeState.start(torch.tensor([[4], [4]]), torch.ones(2, 1, dtype=torch.bool), config)
    # Row 0: block 0, column 1 already committed.  Row 1: block 1 (columns 4..7).
    response = torch.tensor([[MASK, 7, MASK, MASK, MASK, MASK, MASK, MASK], [3, 3, 3, 3, MASK, MASK, MASK, MASK]])
    state = attrs.evolve(state, response=response)
    top1 = [[0.99, 0.995, 0.5, 0.985, 0.999, 0.999, 0.999, 0.999],
            [0.9, 0.9, 0.9, 0.9, 0.6, 0.99, 0.7, 0.5]]
    values = _logits_with_top1(top1)
    confidence = top1_confidence(values).float()
    proposal = Proposal(tokens=values.argmax(-1), confidence=confidence,
                        scores=confidence.masked_fill(~state.masked, float("-inf")), logits=Logits(values=values))
    plan = Plan(window_start=torch.tensor([0, 4]), window_end=torch.tensor([4, 8]), budget=torch.tensor([1, 1]))
    plugin.dllm_start(state=state)
    chosen = plugin.dllm_remask(state=state, proposal=proposal, plan=plan)
    # Row 0: accepted 0 and 3 (above 0.98; column 1 too but it is committed); top-1 adds nothing new.
    # Row 1: accepted 5; the baseline's top-1 is 5 as well.  Then with a budget of 2: 5 and 6.
    assert chosen.tolist() == [[True, False, False, True, False, False, False, False],
                               [False, False, False, False, False, True, False, False]]
    plan2 = attrs.evolve(plan, budget=torch.tensor([1, 2]))
    assert plugin.dllm_remask(state=state, proposal=proposal, plan=plan2)[1].nonzero().flatten().tolist() == [5, 6]
    # A filter that accepts nothing leaves exactly the baseline's top-k.
    plugin.threshold = 1.0
    assert plugin.dllm_remask(state=state, proposal=proposal, plan=plan2).nonzero().tolist() == [[0, 0], [1, 5],
                                                                                                [1, 6]]


def test_filter_file_round_trip_and_clear_errors(tmp_path, monkeypatch):
    path = _threshold_filter(tmp_path / "f.safetensors", width=4)
    loaded = load_filter(path)
    assert loaded.width == 4 and loaded.threshold == 0.96 and loaded.metadata["training"] == {"hand_set": True}
    assert sum(p.numel() for p in FilterMLP(32, 32).parameters()) == 2112  # the paper's size
    assert build_strategy(f"learned_filter(path='{path}',threshold=0.5)").plugins["learned_filter"].threshold == 0.5
    monkeypatch.setattr(filter_model, "DEFAULT_FILTER", tmp_path / "missing" / "filter-default.safetensors")
    with pytest.raises(SpecError, match="shipped default filter .* does not exist; train one with `dllm-strategies "
                                        "train-filter"):
        build_strategy("learned_filter")
    with pytest.raises(SpecError, match="does not exist; train one"):
        build_strategy(f"learned_filter(path='{tmp_path / 'nope.safetensors'}')")
    with pytest.raises(SpecError, match="threshold must lie in"):
        build_strategy(f"learned_filter(path='{path}',threshold=1.5)")
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "width": 8, "hidden": 8}))
    with pytest.raises(ModelError, match="width 8 and hidden 8 .* need"):
        load_filter(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="has no metadata file"):
        load_filter(path)
    with pytest.raises(ModelError, match="must end in .safetensors"):
        save_filter(FilterMLP(4, 4), tmp_path / "f.pt")


def test_filter_width_must_equal_the_block_length(tmp_path):
    path = _threshold_filter(tmp_path / "f.safetensors", width=4)
    model = FakeModel(logits_fn=ScriptedLogits(20), vocab_size=20)
    with pytest.raises(PluginError, match="reads blocks of 4 positions but block_length is 8; decode with "
                                          "block_length=4, or train a filter"):
        decode(model, [[5, 6]], strategy=f"learned_filter(path='{path}')", gen_length=16, block_length=8)


@pytest.fixture(scope="module")
def width4_filter(tmp_path_factory):
    return _threshold_filter(tmp_path_factory.mktemp("filter") / "w4.safetensors", width=4)


@st.composite
def _block4_shapes(draw):
    blocks, batch = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    prompts = [draw(st.lists(st.integers(2, 23), min_size=1, max_size=5)) for _ in range(batch)]
    return {"prompts": prompts, "gen_length": 4 * blocks, "block_length": 4,
            "steps": draw(st.integers(1, 4)) * blocks}


@pytest.mark.parametrize("extra", ["", "+eot", "+margin", "+gumbel(temperature=0.5)+eot"])
def test_filter_keeps_the_promises(width4_filter, extra):
    # The kit's drawn shapes use block lengths 2, 4 and 8, and a filter reads one width: the same
    # checks run here on the kit's fake models with the filter's block length.
    spec = f"learned_filter(path='{width4_filter}'){extra}"

    @QUICK
    @given(model=fake_models(), shape=_block4_shapes(), seed=st.integers(0, 2**16))
    def check(model, shape, seed):
        check_strategy(spec, model, seed=seed, **shape)

    check()


def test_filter_commits_more_than_the_baseline_when_confident(width4_filter):
    model = constant_model(torch.tensor([6, 7, 8, 9, 6, 7, 8, 9]), prompt_length=2, strength=9.0)
    filtered = decode(fresh(model), [[3, 4]], strategy=f"learned_filter(path='{width4_filter}')", gen_length=8,
                      block_length=4)
    baseline = decode(fresh(model), [[3, 4]], gen_length=8, block_length=4)
    assert torch.equal(filtered.tokens, baseline.tokens)
    assert filtered.steps.tolist() == [2] and baseline.steps.tolist() == [8]


# ------------------------------------------------------------------------------------------
# Training: labels, fit, the train-filter command
# ------------------------------------------------------------------------------------------
def test_collect_records_block_confidences_and_oracle_labels():
    model = chain_model(prompt_length=1)
    data = collect(model, [[3]], gen_length=8, block_length=4, chat=False)
    # The chain model finds one more reference token per step: 8 steps, and at the k-th step of
    # a block the first k + 1 positions predict the reference (with confidence 0.97, the rest 0.2).
    assert len(data) == 8 and data.features.shape == (8, 4) and data.prompts == 1
    staircase = torch.tril(torch.ones(4, 4))
    assert torch.equal(data.labels, torch.cat([staircase, staircase]))
    sure, unsure = float(torch.softmax(torch.tensor([6.0] + [0.0] * 11), 0)[0]), \
        float(torch.softmax(torch.tensor([1.0] + [0.0] * 11), 0)[0])
    assert torch.allclose(data.features, torch.where(data.labels.bool(), sure, unsure))
    assert torch.equal(data.masked, ~torch.cat([torch.tril(torch.ones(4, 4), -1)] * 2).bool())


def test_fit_learns_a_separable_rule():
    # Label 1 on confident positions (features in [0.8, 1]), 0 on the others ([0, 0.4]).
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(256, 8, generator=g) < 0.5
    features = torch.where(labels, 0.8 + 0.2 * torch.rand(256, 8, generator=g), 0.4 * torch.rand(256, 8, generator=g))
    data = OracleSteps(features=features, labels=labels.float(), masked=torch.ones(256, 8, dtype=torch.bool))
    network, losses = fit(data, epochs=600, seed=0)
    assert len(losses) == 600 and losses[-1] < 0.35 * losses[0]
    assert ((torch.sigmoid(network(features)) > 0.5) == labels).float().mean() > 0.9
    again, _ = fit(data, epochs=5, seed=0)
    other, _ = fit(data, epochs=5, seed=0)
    assert torch.equal(again.outer.weight, other.outer.weight)


def test_train_filter_command_writes_a_filter_that_decodes(tmp_path):
    from dllm_strategies.cli import main
    from dllm_strategies.models.tiny import tiny_model

    tiny = tiny_model(hidden_size=16, num_layers=1, num_heads=2, seed=4)
    tiny.module.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    output = tmp_path / "out" / "filter.safetensors"
    code = main(["train-filter", "--model", str(tmp_path / "model"), "--output", str(output), "--prompts", "6",
                 "--val-prompts", "2", "--gen-length", "16", "--block-length", "8", "--batch-size", "4",
                 "--epochs", "60", "--seed", "1", "--device", "cpu", "--quiet"])
    assert code == 0
    meta = json.loads(output.with_suffix(".json").read_text())
    assert (meta["width"], meta["hidden"], meta["threshold"]) == (8, 8, 0.96)
    facts = meta["training"]
    assert facts["prompts"] == [6] and facts["epochs"] == 60 and facts["steps_collected"] >= 6 * 2
    assert facts["final_loss"] < facts["first_loss"] and "validation" in facts
    assert facts["command"].startswith("dllm-strategies train-filter") and "--block-length 8" in facts["command"]
    with torch.inference_mode():
        result = decode(tiny, ["Tom has 3 apples . How many apples does Tom have now ?"],
                        strategy=f"learned_filter(path='{output}',threshold=0.5)+eot", gen_length=16,
                        block_length=8, chat=True)
    assert not (result.tokens == tiny.mask_id).any() and int(result.forced.sum()) == 0
    assert main(["train-filter", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "f.pt"),
                 "--prompts", "1", "--val-prompts", "0", "--epochs", "1", "--quiet"]) == 2
    with pytest.raises(ConfigError, match="gen_length=10 is not a multiple of block_length=4"):
        FilterTraining(gen_lengths=(8, 10), prompts=(1, 1), val_prompts=(0, 0), block_length=4)
    with pytest.raises(ConfigError, match="prompts gives 1 counts for 2 generation lengths"):
        FilterTraining(gen_lengths=(8, 16), block_length=4)
    with pytest.raises(ConfigError, match="distinct"):
        FilterTraining(gen_lengths=(8, 8), prompts=(1, 1), val_prompts=(0, 0), block_length=4)
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        FilterTraining(epochs=0)


def test_train_filter_collects_every_gen_length_and_reports_each(tmp_path):
    from dllm_strategies.cli import main
    from dllm_strategies.models.tiny import tiny_model

    tiny = tiny_model(hidden_size=16, num_layers=1, num_heads=2, seed=4)
    tiny.module.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    output = tmp_path / "filter.safetensors"
    assert main(["train-filter", "--model", str(tmp_path / "model"), "--output", str(output),
                 "--gen-length", "8", "16", "--prompts", "4", "2", "--val-prompts", "0", "2", "--block-length", "8",
                 "--batch-size", "4", "--epochs", "5", "--device", "cpu", "--quiet"]) == 0
    facts = json.loads(output.with_suffix(".json").read_text())["training"]
    by_length = facts["train_by_gen_length"]
    # Every prompt decodes one block at gen 8 and two at gen 16: at least one oracle step per block.
    assert by_length["8"]["steps"] >= 4 and by_length["16"]["steps"] >= 2 * 2
    assert facts["steps_collected"] == by_length["8"]["steps"] + by_length["16"]["steps"]
    assert list(facts["validation_by_gen_length"]) == ["16"]
    assert facts["validation"]["steps"] == facts["validation_by_gen_length"]["16"]["steps"]
    assert "--gen-length 8 16 --" in facts["command"] and "--prompts 4 2 " in facts["command"]
