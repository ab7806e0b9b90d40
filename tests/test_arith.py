"""The synthetic task, its tokenizer, and the masked-diffusion SFT trainer."""

from __future__ import annotations

import argparse
import math

import attrs
import pytest
import torch
from hypothesis import given, strategies as st

from dllm_arith import task
from dllm_arith.tokenizer import build_tokenizer, prompt_text, response_text
from dllm_arith import sft


def test_generator_is_deterministic_and_well_formed():
    a = list(task.generate(200, seed=5))
    assert a == list(task.generate(200, seed=5))
    assert a != list(task.generate(200, seed=6))
    for p in a:
        assert task.extract_answer(p.solution) == p.answer
        lines = p.solution.split(" . ")
        assert 1 <= len(lines) - 1 <= 4  # one worked line per operation, then '#### n'
        total = None
        for line in lines[:-1]:
            expr, result = line.removeprefix("and then ").removeprefix("so ").split(" = ")
            left, op, right = expr.split()
            assert int(result) == (int(left) + int(right) if op == "+" else int(left) - int(right))
            if total is not None:
                assert str(total) in (left, right)  # each line carries the running total
            total = int(result)


def test_difficulty_knobs():
    easy = task.Difficulty(min_ops=1, max_ops=1, forms=0)
    for p in task.generate(100, seed=1, difficulty=easy):
        assert p.solution.count("=") == 1 and not p.solution.startswith(("so", "and"))
    with pytest.raises(ValueError):
        task.Difficulty(min_ops=3, max_ops=2)


def test_the_long_answer_variant_fills_three_or_four_blocks_within_gen_128():
    long = task.Difficulty(min_ops=10, max_ops=12)
    tok = build_tokenizer()
    for p in task.generate(200, seed=3, difficulty=long):
        assert task.extract_answer(p.solution) == p.answer and 10 <= p.solution.count("=") <= 12
        assert 2 * 32 < len(tok(p.solution, add_special_tokens=False)["input_ids"]) <= 128
    with pytest.raises(ValueError):
        task.Difficulty(max_ops=17)


def test_the_commands_take_min_ops():
    parser = argparse.ArgumentParser()
    task.add_difficulty_arguments(parser)
    args = parser.parse_args(["--min-ops", "10", "--max-ops", "12"])
    assert task.difficulty_from_args(args) == task.Difficulty(min_ops=10, max_ops=12)
    inherited = argparse.ArgumentParser()
    task.add_difficulty_arguments(inherited, defaults=None)
    base = {"min_ops": 10, "max_ops": 12, "max_operand": 9, "max_total": 60, "forms": 2}
    assert task.difficulty_from_args(inherited.parse_args([]), base) == task.Difficulty(min_ops=10, max_ops=12)


def test_shipped_test_split_is_fixed_unique_and_never_trained_on():
    test = task.test_problems()
    assert len(test) >= 500 and len({p.question for p in test}) == len(test)
    splits = task.make_splits(train_size=3000, validation_size=200, seed=0)
    train_q = set(splits["train"]["question"])
    assert not train_q & {p.question for p in test}
    assert not train_q & set(splits["validation"]["question"])
    assert splits["test"].num_rows == len(test)
    assert [p.to_dict() for p in task.validation_problems(200, seed=0)] == list(splits["validation"])


def test_training_never_holds_a_validation_question_whatever_part_its_loss_reads():
    d = task.Difficulty(max_ops=1, max_operand=3)  # a small space, so that collisions happen
    validation = {p.question for p in task.validation_problems(difficulty=d)}
    splits = task.make_splits(train_size=3000, validation_size=20, seed=0, difficulty=d)
    assert len(validation) > 20 and not set(splits["train"]["question"]) & validation
    assert splits["validation"].num_rows == 20


def test_long_answer_variant_is_a_task_of_its_own_never_trained_on():
    from dllm_strategies import discovery

    long = discovery.task("arith-long")
    assert long is task.ARITH_LONG and discovery.task("arith") is task.ARITH
    test = long.test_problems()
    assert len(test) == 500 and len({p.question for p in test}) == 500
    lines = [len(p.solution.split(" . ")) for p in test]  # one line per event, then "#### n"
    assert min(lines) >= 11 and max(lines) <= 13
    questions = {p.question for p in test}
    assert not questions & {p.question for p in task.test_problems()}
    # the long-answer base model's recipe (docs/distillation.md): seed 0, 100,000 problems, 256 validation
    validation = long.validation_problems()
    assert not questions & {p.question for p in validation}
    assert [p.question for p in validation[:256]] == [p.question for p in
                                                      task.validation_problems(256, 0, long.difficulty)]
    exclude = task.held_out_questions() | {p.question for p in validation[:256]}
    assert not questions & {p.question for p in task.generate(100_000, 0, long.difficulty, exclude)}
    assert task.make_splits(8, 4, seed=0, difficulty=long.difficulty)["test"]["question"] == [p.question
                                                                                             for p in test]


def test_tokenizer_round_trip_and_specials(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for p in task.generate(50, seed=2):
        ids = loaded(response_text(p.solution), add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert task.extract_answer(loaded.decode(ids, skip_special_tokens=True)) == p.answer
    assert loaded.mask_token_id is not None and loaded.eos_token_id is not None
    assert prompt_text("Tom has 3 apples .", loaded).endswith("<|assistant|> ")
    digits = loaded("12", add_special_tokens=False)["input_ids"]
    assert len(digits) == 2  # every digit its own token


class Uniform(torch.nn.Module):
    """Logits all zero: CE is log(V) at every position."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        T = logits_to_keep or input_ids.shape[1]
        out = torch.zeros(input_ids.shape[0], T, self.vocab) + 0 * self.w

        class Out:
            logits = out

        return Out


def test_sft_loss_matches_hand_computation():
    V, L = 7, 5
    batch = sft.collate([[3, 4], [5]], [[2, 2], [6]], gen_length=L, pad_id=1, fill_id=1)
    assert batch.input_ids.tolist() == [[3, 4, 2, 2, 1, 1, 1], [1, 5, 6, 1, 1, 1, 1]]
    assert batch.attention_mask.tolist()[1][0] == 0
    loss = sft.masked_diffusion_loss(Uniform(V), batch, mask_id=0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws
    t = torch.rand(2, 1, generator=g)
    p = (1 - sft.EPS) * t + sft.EPS
    masked = torch.rand(2, L, generator=g) < p
    expected = sum(masked[b].sum().item() * math.log(V) / p[b].item() for b in range(2)) / (L * 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_response_longer_than_gen_length_is_an_error():
    with pytest.raises(ValueError, match="does not fit gen_length=2"):
        sft.collate([[3]], [[2, 2, 2]], gen_length=2, pad_id=1, fill_id=1)


def test_cropped_canvas_leaves_attention_and_loss():
    V, L = 7, 5
    full = sft.collate([[3, 4], [5]], [[2, 2], [6]], gen_length=L, pad_id=1, fill_id=1)
    cropped = sft.collate([[3, 4], [5]], [[2, 2], [6]], gen_length=L, pad_id=1, fill_id=1, live=[3, 5])
    assert cropped.input_ids.tolist() == full.input_ids.tolist()
    assert cropped.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]]
    loss = sft.masked_diffusion_loss(Uniform(V), cropped, mask_id=0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.rand(2, 1, generator=g)
    p = (1 - sft.EPS) * t + sft.EPS
    masked = torch.rand(2, L, generator=g) < p
    masked[0, 3:] = False  # the first row's two cropped columns count for nothing
    expected = sum(masked[b].sum().item() * math.log(V) / p[b].item() for b in range(2)) / (L * 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="live length 1 must lie between the response's 2 tokens"):
        sft.collate([[3]], [[2, 2]], gen_length=L, pad_id=1, fill_id=1, live=[1])


@given(st.lists(st.integers(0, 40), min_size=1, max_size=16), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_cropped_lengths_keep_the_response_and_one_end_of_text(responses, rate, seed):
    L = 40
    live = sft.cropped_lengths(responses, L, rate, torch.Generator().manual_seed(seed))
    for r, keep in zip(responses, live, strict=True):
        assert keep == L or r < keep < L  # the response and at least one end-of-text always stay
    if rate == 0.0:
        assert live == [L] * len(responses)


def test_cropped_lengths_cover_the_whole_tail():
    live = sft.cropped_lengths([10] * 4000, 14, 1.0, torch.Generator().manual_seed(0))
    assert set(live) == {11, 12, 13, 14}


def test_checkpoint_from_before_an_option_existed_still_resumes(tmp_path):
    config = sft.TrainConfig(steps=4)
    older = {k: v for k, v in attrs.asdict(config).items() if k != "eot_crop"}
    (tmp_path / "work").mkdir()
    torch.save({"model": {}, "optimizer": {}, "step": 2, "records": [], "config": older},
               tmp_path / "work" / sft.CHECKPOINT)
    assert sft.load_checkpoint(tmp_path / "work", config)["step"] == 2
    with pytest.raises(ValueError, match="another training config"):
        sft.load_checkpoint(tmp_path / "work", attrs.evolve(config, eot_crop=0.5))


def test_a_resume_on_other_data_is_refused_and_an_older_checkpoint_is_not(tmp_path):
    from dllm_arith.recipe import training_data

    config = sft.TrainConfig(steps=4)
    long = training_data(task.Difficulty(min_ops=10, max_ops=12), 100_000)
    (tmp_path / "work").mkdir()
    base = {"model": {}, "optimizer": {}, "step": 2, "records": [], "config": attrs.asdict(config)}
    torch.save({**base, "data": long}, tmp_path / "work" / sft.CHECKPOINT)
    assert sft.load_checkpoint(tmp_path / "work", config, long)["step"] == 2
    with pytest.raises(ValueError, match=r"other data \(difficulty differ"):
        sft.load_checkpoint(tmp_path / "work", config, training_data(task.Difficulty(), 100_000))
    with pytest.raises(ValueError, match="train_size differ"):
        sft.load_checkpoint(tmp_path / "work", config, training_data(task.Difficulty(min_ops=10, max_ops=12), 400_000))
    torch.save(base, tmp_path / "work" / sft.CHECKPOINT)  # written before the data was recorded
    assert sft.load_checkpoint(tmp_path / "work", config, long)["step"] == 2


def _micro_run(tmp_path, steps, name):
    from transformers import LlamaForCausalLM

    from dllm_arith.recipe import ModelShape, encode, model_config

    tok = build_tokenizer()
    problems = [p.to_dict() for p in task.generate(64, seed=0)]
    pairs = encode(problems, tok)
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(tok, ModelShape(hidden_size=16, intermediate_size=32,
                                                          num_hidden_layers=1, num_attention_heads=2)))
    config = sft.TrainConfig(steps=4, batch_size=4, eval_every=2, save_every=2, gen_lengths=(48,),
                             gen_length_weights=(1.0,), eot_crop=0.5)  # cropped canvases resume exactly too
    out = tmp_path / name
    if steps < 4:  # stop early, as an interrupted run would, by training a shorter run's prefix
        sft.train(model, pairs, pairs[:8], mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                  fill_id=tok.eos_token_id, output_dir=out, config=attrs.evolve(config, steps=steps),
                  progress=False)
        saved = torch.load(out / sft.CHECKPOINT, weights_only=False)
        saved["config"] = attrs.asdict(config)
        torch.save(saved, out / sft.CHECKPOINT)
        torch.manual_seed(1)
        model = LlamaForCausalLM(model.config)  # fresh weights: everything must come from the checkpoint
    records = sft.train(model, pairs, pairs[:8], mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                        fill_id=tok.eos_token_id, output_dir=out, config=config, progress=False)
    return model, records


def test_training_smoke_and_exact_resume(tmp_path):
    straight, records = _micro_run(tmp_path, 4, "straight")
    assert [r["step"] for r in records] == [2, 4]
    assert all(math.isfinite(r["validation_loss"]) for r in records)
    resumed, _ = _micro_run(tmp_path, 2, "resumed")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_resume_with_other_config_is_refused(tmp_path):
    _micro_run(tmp_path, 4, "run")
    with pytest.raises(ValueError, match="another training config"):
        sft.train(Uniform(5), [], [], mask_id=0, pad_id=1, fill_id=1, output_dir=tmp_path / "run",
                  config=sft.TrainConfig(steps=9), progress=False)
