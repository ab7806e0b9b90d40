"""Behaviour of the decode loop: batching, seeds, finished rows, cost accounting."""

from __future__ import annotations

import pytest
import torch

from dllm_strategies import ConfigError, ModelOutputError, SpecError, decode
from dllm_strategies.testing import FakeModel, ScriptedLogits

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]


def fake(**kwargs) -> FakeModel:
    return FakeModel(logits_fn=ScriptedLogits(40, seed=kwargs.pop("seed", 0)), vocab_size=40, **kwargs)


@pytest.mark.parametrize("spec", [None, "threshold(tau=0.3)", "margin+topk(k=3)", "entropy_threshold(tau=1.0)"])
def test_batch_equals_row_by_row(tiny, spec):
    with torch.no_grad():
        batch = decode(tiny, PROMPTS, strategy=spec, gen_length=16, block_length=4)
        for i, prompt in enumerate(PROMPTS):
            alone = decode(tiny, [prompt], strategy=spec, gen_length=16, block_length=4)
            assert torch.equal(batch.tokens[i], alone.tokens[0])
            assert batch.steps[i] == alone.steps[0] and batch.nfe[i] == alone.nfe[0]


def test_same_seed_same_output_and_seed_matters(tiny32):
    def run(seed):
        with torch.no_grad():
            return decode(tiny32, PROMPTS, strategy="gumbel(temperature=1.0)+random", gen_length=16,
                          block_length=8, seed=seed).tokens

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_result_fields_and_no_mask_left():
    model = fake()
    result = decode(model, PROMPTS, gen_length=12, block_length=4, steps=6, trace=True)
    assert result.tokens.shape == (3, 12)
    assert not (result.tokens == model.mask_id).any()
    assert result.steps.tolist() == [6, 6, 6]
    assert [sum(row) for row in result.tokens_per_step] == [12, 12, 12]
    assert result.tokens_per_step[0] == [2] * 6
    assert result.trace.shape == (6, 3, 12)
    assert (result.commit_step >= 0).all()


def test_cost_counters_match_model_calls():
    model = fake()
    result = decode(model, PROMPTS, strategy="threshold(tau=0.2)", gen_length=16, block_length=8)
    assert result.forwards == len(model.calls)
    assert int(result.nfe.max()) == len(model.calls)
    fed = sum(int(c.attention_mask.sum()) if c.attention_mask is not None else c.input_ids.numel()
              for c in model.calls)
    assert result.positions == fed


def test_finished_rows_leave_the_batch_and_never_change():
    model = fake()
    result = decode(model, PROMPTS, strategy="threshold(tau=0.2)", gen_length=16, block_length=16, trace=True)
    steps = result.steps.tolist()
    assert len(set(steps)) > 1, "rows should finish at different steps for this test to mean something"
    for row, last in enumerate(steps):
        for frame in result.trace[last:]:
            assert torch.equal(frame[row], result.tokens[row])
    # the model saw only the live rows at each call
    sizes = [c.input_ids.shape[0] for c in model.calls]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 3


def test_prompt_is_never_changed_and_left_padding_is_masked():
    model = fake()
    decode(model, PROMPTS, gen_length=8, block_length=8)
    for call in model.calls:
        assert call.input_ids[:, :6].tolist()[0][-3:] == [5, 6, 7]
        assert call.attention_mask is not None and call.attention_mask[0, :3].sum() == 0


# ------------------------------------------------------------------------------ errors
def test_gen_length_not_multiple_of_block_length():
    with pytest.raises(ConfigError, match="gen_length=10 is not a multiple of block_length=4"):
        decode(fake(), PROMPTS, gen_length=10, block_length=4)


def test_steps_not_divisible_by_blocks():
    with pytest.raises(ConfigError, match="steps=5 is not divisible by the number of blocks 2"):
        decode(fake(), PROMPTS, gen_length=8, block_length=4, steps=5)


def test_empty_prompt():
    with pytest.raises(ConfigError, match="prompt 1 has no tokens"):
        decode(fake(), [[3], []], gen_length=4, block_length=4)
    with pytest.raises(ConfigError, match="non-empty list"):
        decode(fake(), [], gen_length=4, block_length=4)


def test_prompt_plus_gen_beyond_positions():
    with pytest.raises(ConfigError, match="exceeds the model's 10 positions"):
        decode(fake(max_positions=10), [[3] * 4], gen_length=8, block_length=8)


def test_missing_mask_id():
    with pytest.raises(ConfigError, match="mask_id is missing"):
        decode(fake(mask_id=-1), [[3]], gen_length=4, block_length=4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits(bad):
    base = ScriptedLogits(40)

    def broken(ids):
        out = base(ids)
        out[:, -2, :] = bad
        return out

    with pytest.raises(ModelOutputError, match="NaN or inf logits at step 0"):
        decode(FakeModel(logits_fn=broken, vocab_size=40), [[3, 4]], gen_length=4, block_length=4)


def test_wrong_vocab_and_shape():
    model = FakeModel(logits_fn=ScriptedLogits(40), vocab_size=41)
    with pytest.raises(ModelOutputError, match="over 40 tokens but its vocab_size is 41"):
        decode(model, [[3, 4]], gen_length=4, block_length=4)
    flat = FakeModel(logits_fn=lambda ids: torch.zeros(ids.shape[0], 40), vocab_size=40)
    with pytest.raises(ModelOutputError, match="expected \\(batch, positions, vocab\\)"):
        decode(flat, [[3, 4]], gen_length=4, block_length=4)


def test_unknown_plugin_lists_known_and_suggests():
    with pytest.raises(Exception, match="unknown plugin 'thresold'. Did you mean 'threshold'"):
        decode(fake(), [[3]], strategy="thresold", gen_length=4, block_length=4)


def test_bad_option_value_fails_before_any_forward():
    model = fake()
    with pytest.raises(SpecError, match="bad options for plugin 'topk'"):
        decode(model, [[3]], strategy="topk(k=0)", gen_length=4, block_length=4)
    assert model.calls == []
