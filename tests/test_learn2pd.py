"""Learn2PD (arXiv 2509.25188) plugins: the EGP oracle, the learned filter and its training
command, End-of-Text truncation."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dllm_strategies import (
    Commit, ConfigError, ModelError, Plugin, PluginError, SpecError, build_strategy, decode, hookimpl, ops,
)
from dllm_strategies.decode import Run, encode_prompts
from dllm_strategies.state import DecodeConfig, DecodeState, Logits, Plan, Proposal
from dllm_strategies.testing import FakeModel, ScriptedLogits, check_strategy, check_strategy_property
from dllm_strategies.testing.invariants import check_result, check_step, decode_shapes, fake_models

from dllm_learn2pd import FilterCommit, filter_model, training
from dllm_learn2pd.eot import eot_cut
from dllm_learn2pd.features import SETTLED, ZERO, block_confidences, place_block, top1_confidence
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


def column_model(tokens: list[int], strengths: list[float], prompt_length: int, vocab: int = 12) -> FakeModel:
    """Predicts ``tokens[column]`` with logit ``strengths[column]`` (0 elsewhere) at every response
    column whatever the input: confidence ``e^s / (e^s + vocab - 1)``."""
    token, strength = torch.tensor(tokens), torch.tensor(strengths, dtype=torch.float64)

    def logits(ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        columns = (torch.arange(T) - prompt_length).clamp(0, token.numel() - 1)
        out = torch.zeros(B, T, vocab, dtype=torch.float64)
        return out.scatter(2, token[columns][None, :, None].expand(B, T, 1),
                           strength[columns][None, :, None].expand(B, T, 1).clone())

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


def test_oracle_copies_the_reference_when_the_block_argmax_repeats():
    predictions = torch.tensor([6, 7, 8, 9, 6, 7, 8, 9])
    reference = torch.tensor([[6, 3, 8, 3, 2, 2, 2, 2]])  # block 0: 2 matches; block 1: none
    model = constant_model(predictions, prompt_length=2)
    _, records, result, _, _ = stepped("egp_oracle(reference=given)", fresh(model), [[3, 4]], gen_length=8,
                                       block_length=4, reference=reference)
    assert torch.equal(result.tokens, reference)
    # Step 0 commits the two matches.  Step 1's block argmax is identical to step 0's: the
    # authors' stall, so the reference is copied at that step.  Block 1 matches nothing at its
    # first step, which is no stall (no previous argmax in the block): the authors' loop commits
    # nothing there and copies at the next forward, which repeats it; here that step commits its
    # best-scored position (every column is equally sure: the first) and the next one copies.
    assert result.commit_step.tolist() == [[0, 1, 0, 1, 2, 3, 3, 3]]
    assert result.steps.tolist() == [4] and result.forwards == 4 and result.forced.tolist() == [0]
    copied = [int((r.commit.mask & (r.proposal.tokens != reference)).sum()) for r in records]
    assert copied == [0, 2, 1, 3]
    # Matches and copies are the oracle's accepted positions; the progress position is not.
    assert [int(r.commit.mask.sum()) for r in records] == [2, 2, 1, 3]


def test_oracle_no_match_stall_copies_at_the_first_step_that_matches_nothing():
    predictions = torch.tensor([6, 7, 8, 9, 6, 7, 8, 9])
    reference = torch.tensor([[6, 3, 8, 3, 2, 2, 2, 2]])
    model = constant_model(predictions, prompt_length=2)
    _, records, result, _, _ = stepped("egp_oracle(reference=given,stall=no_match)", fresh(model), [[3, 4]],
                                       gen_length=8, block_length=4, reference=reference)
    assert torch.equal(result.tokens, reference)
    # The rule before the authors' one: block 1 is copied at its first step, one forward sooner.
    assert result.commit_step.tolist() == [[0, 1, 0, 1, 2, 2, 2, 2]]
    assert result.steps.tolist() == [3] and result.forwards == 3 and result.forced.tolist() == [0]
    assert [int((r.commit.mask & (r.proposal.tokens != reference)).sum()) for r in records] == [0, 2, 4]


@pytest.mark.parametrize(("stall", "commit_step"), [("argmax", [0, 1, 2, 3]), ("no_match", [0, 1, 2, 2])])
def test_oracle_stall_rules_differ_when_the_argmax_moves_without_a_match(stall, commit_step):
    # The chain model predicts 6, 7 at columns 0, 1 (the reference) and then 8 at column 2 where
    # the reference has 3: step 2 matches nothing although its argmax moved (8 replaced a filler).
    # The authors' loop commits nothing there and copies at step 3, whose forward repeats step 2's
    # (same input, same argmax); no_match copies at step 2.
    model = chain_model(prompt_length=1)
    reference = torch.tensor([[6, 7, 3, 3]])
    _, records, result, _, _ = stepped(f"egp_oracle(reference=given,stall={stall})", fresh(model), [[3]],
                                       gen_length=4, block_length=4, reference=reference)
    assert torch.equal(result.tokens, reference) and result.forced.tolist() == [0]
    assert result.commit_step.tolist() == [commit_step]
    if stall == "argmax":
        # Step 2 commits only its best-scored position (column 2, confidence 0.97 against 0.2).
        assert records[2].commit.mask.tolist() == [[False, False, True, False]]


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
@given(model=fake_models(), case=_oracle_case(), eot=st.sampled_from(["", "+eot", "+eot(committed=any)"]),
       stall=st.sampled_from(["argmax", "no_match"]))
def test_oracle_keeps_the_promises_with_a_given_reference(model, case, eot, stall):
    # The kit's check_strategy_property cannot pass a reference, so the same per-step and per-run
    # checks run here on a stepped run with one.
    shape, reference = case
    spec = f"egp_oracle(reference=given,stall={stall})" + eot
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


def test_a_self_reference_handed_over_in_extras_is_used_and_checked():
    REFERENCES.clear()
    model = FakeModel(logits_fn=ScriptedLogits(20, seed=3), vocab_size=20)
    given_answers = torch.tensor([[1, 2, 1, 2], [3, 4, 3, 4]])
    result = decode(model, [[7, 8, 9], [5, 6]], strategy="egp_oracle", gen_length=4, block_length=4,
                    extras={"self_reference": given_answers})
    assert len(model.calls) == result.forwards  # no reference decode
    assert torch.equal(result.tokens, given_answers)
    with pytest.raises(PluginError, match=r"self_reference.* \(2, 8\)"):
        decode(model, [[7, 8, 9], [5, 6]], strategy="egp_oracle", gen_length=8, block_length=4,
               extras={"self_reference": given_answers})
    with pytest.raises(PluginError, match="mask token"):
        decode(model, [[7, 8, 9], [5, 6]], strategy="egp_oracle", gen_length=4, block_length=4,
               extras={"self_reference": torch.full((2, 4), model.mask_id)})
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


def test_eot_committed_branch_cuts_only_after_an_accepted_end_of_text():
    # Step 2 committed end-of-text at columns 1 and 3; only column 3 was the filter's own choice.
    state = _hand_state([5, EOT, MASK, EOT, MASK, MASK, MASK, MASK], [0, 2, -1, 2, -1, -1, -1, -1], step=2)
    proposal = _hand_proposal([5, EOT, 6, EOT, EOT, 6, EOT, 6], [.9, .9, .5, .95, .8, .5, .99, .5])
    accepted = torch.tensor([[False, False, False, True, False, False, False, False]])
    assert eot_cut(state, proposal).tolist() == [2]  # any committed one: the first, column 1
    assert eot_cut(state, proposal, accepted=accepted).tolist() == [4]
    # Nothing accepted (no filter): the predicted branch, the most confident masked one (column 6).
    none = torch.zeros_like(accepted)
    assert eot_cut(state, proposal, accepted=none).tolist() == [7]
    assert eot_cut(state, proposal, accepted=none, predicted=False).tolist() == [8]


def test_eot_predicted_branch_reads_the_mask_before_the_commit():
    # Step 1 committed end-of-text at column 1 (the top-k's, not accepted); it was the most
    # confident end-of-text prediction.  Before the commit it was masked: the authors cut after
    # it; read after the commit, the most confident still-masked prediction is column 3.
    state = _hand_state([5, EOT, MASK, MASK, MASK, MASK], [0, 1, -1, -1, -1, -1], step=1)
    proposal = _hand_proposal([5, EOT, 6, EOT, 6, EOT], [.9, .99, .5, .8, .5, .7])
    before = state.masked | (state.commit_step == 1)
    none = torch.zeros_like(before)
    assert eot_cut(state, proposal, accepted=none, masked=before).tolist() == [2]
    assert eot_cut(state, proposal, accepted=none).tolist() == [4]


# Block 0 of a hand-made canvas (gen 8, block 4, 2 commits per step): column 0 is a sure word,
# column 1 an end-of-text, columns 2-3 unsure words, block 1 all end-of-text.  The first step
# commits columns 0 and 1 (the top 2), so it commits an end-of-text.
_TOKENS = [2, EOT, 3, 4, EOT, EOT, EOT, EOT]


def _first_cut(spec: str, strengths: list[float]) -> int:
    model = column_model(_TOKENS, strengths, prompt_length=1)
    _, records, result, _, _ = stepped(spec, fresh(model), [[3]], gen_length=8, block_length=4, steps=4)
    assert records[0].commit.mask[0, :2].all() and int(records[0].commit.mask.sum()) == 2
    assert not (result.tokens == MASK).any()
    return int(records[0].after.live_length[0])


@pytest.mark.parametrize(("options", "cut"), [
    ("", 5),                                     # the authors': column 1 is no filter's choice
    ("(committed=any)", 2),                      # any committed end-of-text cuts
    ("(predicted_mask=after)", 5),
    ("(committed=any,predicted_mask=after)", 2),  # the rule before the authors' one
    ("(cut=committed)", 2),                      # the conservative variant: any committed one
])
def test_eot_options_on_a_committed_end_of_text_the_filter_did_not_accept(options, cut):
    # Column 1's end-of-text (confidence 0.9963) is less sure than block 1's (0.9986 each).
    assert _first_cut(f"eot{options}", [10, 8, 2, 2, 9, 9, 9, 9]) == cut


@pytest.mark.parametrize(("options", "cut"), [
    ("", 2),                                     # masked before the commit: column 1 is the surest
    ("(predicted_mask=after)", 5),               # still masked after it: block 1's
    ("(committed=any)", 2),
    ("(committed=any,predicted_mask=after)", 2),
])
def test_eot_options_when_the_surest_end_of_text_is_committed_by_the_top_k(options, cut):
    # Column 1's end-of-text (0.9992) is now surer than block 1's (0.9963).
    assert _first_cut(f"eot{options}", [10, 9.5, 2, 2, 8, 8, 8, 8]) == cut


def test_eot_cuts_after_an_end_of_text_the_filter_accepted(tmp_path):
    path = _threshold_filter(tmp_path / "f.safetensors", width=4, above=0.999)
    filtered = f"learned_filter(path='{path}')"
    # Column 1 (0.9963) is below the filter's 0.999: the top-k commits it, the filter does not.
    below = [10, 8, 2, 2, 9, 9, 9, 9]
    assert _first_cut(f"{filtered}+eot", below) == 5
    assert _first_cut(f"{filtered}+eot(committed=any)", below) == 2
    # Column 1 (0.9995) above it: the filter accepts it and the committed branch cuts after it,
    # although block 1's end-of-text (0.9998) is surer; eot alone cuts after block 1's.
    above = [10, 10, 2, 2, 11, 11, 11, 11]
    assert _first_cut(f"{filtered}+eot", above) == 2
    assert _first_cut("eot", above) == 5


def test_eot_reads_accepted_positions_from_any_commit_that_reports_them():
    class Reporter(Plugin):
        """Commits the top-1 and reports it as accepted, in a Commit subclass of its own."""

        @attrs.frozen
        class Reported(Commit):
            accepted: torch.Tensor | None = attrs.field(default=None, eq=False)

        @hookimpl
        def dllm_remask(self, state, proposal, plan):
            top = ops.best_mask(proposal.scores, plan.window(state))
            return self.Reported(mask=top, accepted=top)

    class Silent(Reporter):
        @hookimpl
        def dllm_remask(self, state, proposal, plan):
            return ops.best_mask(proposal.scores, plan.window(state))

    # The top-1 is column 1's end-of-text; block 1's end-of-text predictions are surer still.
    model = column_model(_TOKENS, [8, 10, 2, 2, 11, 11, 11, 11], prompt_length=1)
    # Reported accepted: eot cuts right after column 1 at the first step.
    _, records, _, _, _ = stepped([Reporter(), "eot"], fresh(model), [[3]], gen_length=8, block_length=4, steps=8)
    assert records[0].after.live_length.tolist() == [2] and len(records) == 2
    # The same commit unreported: only the predicted branch, after block 1's first column.
    _, records, _, _, _ = stepped([Silent(), "eot"], fresh(model), [[3]], gen_length=8, block_length=4, steps=8)
    assert records[0].after.live_length.tolist() == [5]

    class Wrong(Reporter):
        @hookimpl
        def dllm_remask(self, state, proposal, plan):
            top = ops.best_mask(proposal.scores, plan.window(state))
            return self.Reported(mask=top, accepted=top.long())

    with pytest.raises(PluginError, match=r"Commit.accepted is \(1, 8\) torch.int64; report .* bool tensor"):
        decode(fresh(model), [[3]], strategy=[Wrong(), "eot"], gen_length=8, block_length=4, steps=8)


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


def test_eot_options_keep_the_promises():
    # The authors' options are eot's defaults (test_eot_alone_keeps_the_promises); these are the
    # old behaviours and the committed-only variant reading accepted positions.
    check_strategy_property("eot(committed=any,predicted_mask=after)+topk(k=2)", max_examples=4)
    check_strategy_property("eot(predicted_mask=after)", max_examples=3)
    check_strategy_property("eot(cut=committed,committed=accepted)", max_examples=3)


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
    expected = torch.tensor([[ZERO, ZERO, 0.9, 0.5],    # columns 0, 1 not covered: the padding, 0
                             [0.99, 0.2, 0.6, ZERO]])   # column 7 is cut (live length 7)
    assert ZERO == 0.0 and features.dtype == torch.float32 and torch.allclose(features, expected)
    settled = block_confidences(logits, start=torch.tensor([0, 4]), width=4, live_length=torch.tensor([10, 7]),
                                gen_length=10, pad=SETTLED)
    assert torch.allclose(settled, torch.tensor([[SETTLED, SETTLED, 0.9, 0.5], [0.99, 0.2, 0.6, SETTLED]]))
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
    expected = [[True, False, False, True, False, False, False, False],
                [False, False, False, False, False, True, False, False]]
    assert isinstance(chosen, FilterCommit) and chosen.mask.tolist() == expected and chosen.tokens is None
    assert chosen.accepted.tolist() == expected
    plan2 = attrs.evolve(plan, budget=torch.tensor([1, 2]))
    wider = plugin.dllm_remask(state=state, proposal=proposal, plan=plan2)
    assert wider.mask[1].nonzero().flatten().tolist() == [5, 6]
    assert wider.accepted[1].nonzero().flatten().tolist() == [5]  # 6 is the top-k's, not the filter's
    # A filter that accepts nothing leaves exactly the baseline's top-k, and reports no position.
    plugin.threshold = 1.0
    nothing = plugin.dllm_remask(state=state, proposal=proposal, plan=plan2)
    assert nothing.mask.nonzero().tolist() == [[0, 0], [1, 5], [1, 6]] and not nothing.accepted.any()


def _cross_filter(path, width: int = 4):
    """A hand-set filter that accepts position 0 exactly when the *last* position's feature
    exceeds 0.5, and nothing else: it shows what a cut position is read as."""
    network = FilterMLP(width, width)
    with torch.no_grad():
        network.inner.weight.zero_()
        network.inner.weight[0, width - 1] = 1.0
        network.inner.bias.zero_()
        network.outer.weight.zero_()
        network.outer.weight[0, 0] = 40.0
        network.outer.bias.fill_(-40.0)
        network.outer.bias[0] = -20.0 + float(torch.log(torch.tensor(0.96 / 0.04)))
    save_filter(network, path, threshold=0.96, training={"hand_set": True})
    return path


@pytest.mark.parametrize(("padding", "accepted"), [("zero", []), ("settled", [0])])
def test_filter_reads_cut_positions_as_its_padding(tmp_path, padding, accepted):
    path = _cross_filter(tmp_path / "cross.safetensors")
    default = build_strategy(f"learned_filter(path='{path}')").plugins["learned_filter"]
    assert default.options.padding == "zero"  # the authors'
    plugin = build_strategy(f"learned_filter(path='{path}',padding={padding})").plugins["learned_filter"]
    config = DecodeConfig(gen_length=4, block_length=4, mask_id=MASK, fill_id=EOT)
    state = DecodeState.start(torch.tensor([[4]]), torch.ones(1, 1, dtype=torch.bool), config)
    # Column 3 was cut by End-of-Text truncation (live length 3): the block is one position short.
    state = attrs.evolve(state, response=torch.tensor([[MASK, MASK, MASK, EOT]]), live_length=torch.tensor([3]))
    values = _logits_with_top1([[0.3, 0.6, 0.5, 0.99]])
    confidence = top1_confidence(values).float()
    proposal = Proposal(tokens=values.argmax(-1), confidence=confidence,
                        scores=confidence.masked_fill(~state.masked, float("-inf")), logits=Logits(values=values))
    plan = Plan(window_start=torch.tensor([0]), window_end=torch.tensor([4]), budget=torch.tensor([1]))
    plugin.dllm_start(state=state)
    commit = plugin.dllm_remask(state=state, proposal=proposal, plan=plan)
    # zero: the cut column reads 0 (the authors' zero-padding), so column 0 is not accepted;
    # settled: it reads 1.0 and column 0 is.  The top-1 (column 1) is committed either way.
    assert commit.accepted[0].nonzero().flatten().tolist() == accepted
    assert commit.mask[0].nonzero().flatten().tolist() == sorted(accepted + [1])


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


@pytest.mark.parametrize(("options", "extra"), [
    ("", ""), ("", "+eot"), ("", "+margin"), ("", "+gumbel(temperature=0.5)+eot"),
    (",padding=settled", "+eot(committed=any,predicted_mask=after)"),
])
def test_filter_keeps_the_promises(width4_filter, options, extra):
    # The kit's drawn shapes use block lengths 2, 4 and 8, and a filter reads one width: the same
    # checks run here on the kit's fake models with the filter's block length.
    spec = f"learned_filter(path='{width4_filter}'{options}){extra}"

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


@pytest.mark.parametrize(("stall", "rows"), [("argmax", 4), ("no_match", 3)])
def test_collect_labels_with_the_oracles_stall_rule(monkeypatch, stall, rows):
    # The chain model against the reference 6 7 3 3: step 2 matches nothing although its argmax
    # moved.  The authors' oracle spends one more step (a recorded row) before it copies.
    monkeypatch.setattr(training, "self_reference", lambda *args: torch.tensor([[6, 7, 3, 3]]))
    data = collect(chain_model(prompt_length=1), [[3]], gen_length=4, block_length=4, chat=False, stall=stall)
    assert len(data) == rows
    assert data.labels[:3].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    # No feature is padded: the oracle runs without truncation over the whole response.
    assert bool((data.features > 0).all())
    with pytest.raises(ConfigError, match="oracle stall rule must be one of argmax, no_match"):
        FilterTraining(oracle_stall="sometimes")


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

    tiny = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2, seed=4)
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
    assert facts["oracle"] == "egp_oracle(reference=given,stall=argmax)" and facts["oracle_stall"] == "argmax"
    assert facts["feature_padding"] == "zero"
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

    tiny = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2, seed=4)
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
