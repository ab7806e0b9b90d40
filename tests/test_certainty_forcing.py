"""dParallel certainty-forcing distillation (plugins/dllm_certainty_forcing).

Unit tests check the masking scheme and each loss term on hand-computed examples; the
trajectory filter on a scripted teacher; the training loop's data order, validation, LoRA
and export on tiny models; and a smoke test runs ``distill trajectories`` + ``distill
train`` through the CLI on a micro model, interrupted and resumed, against an
uninterrupted run.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_native_models import write_llada

# The task module itself, not its test_problems: a function of that name here would be collected.
import dllm_arith.task as arith_task
from dllm_arith.sft import collate
from dllm_arith.task import ARITH_LONG, Problem, extract_answer, validation_problems
from dllm_arith.tokenizer import build_tokenizer
from dllm_certainty_forcing import loss as cf_loss
from dllm_certainty_forcing import trajectories as tr
from dllm_certainty_forcing.commands import default_total_length
from dllm_certainty_forcing.diagnostic import DiagnosticConfig, diagnose, markdown, visited_states
from dllm_certainty_forcing.export import save_student
from dllm_certainty_forcing.masking import MaskRatio, block_count, draw_views
from dllm_certainty_forcing.training import DistillConfig, attach_lora, batch_indices, batch_terms, distill, layout
from dllm_strategies import decode, encode_prompts, ops
from dllm_strategies.cli import main
from dllm_strategies.discovery import installed_models
from dllm_strategies.errors import ConfigError, ModelError
from dllm_strategies.models import families, load_model
from dllm_strategies.models.tiny import tiny_model
from dllm_strategies.testing import FakeModel


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- masking

@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 6), length=st.integers(1, 100), block=st.integers(1, 40),
       ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_views_partition_the_active_block(batch, length, block, ratio, seed):
    views = draw_views(batch, length, block_length=block, mask_ratio=ratio, generator=_gen(seed))
    position = torch.arange(length)[None, :]
    start = views.block[:, None] * block
    assert bool((views.block < block_count(length, block)).all())
    # the active block is the drawn block (the last one takes what remains), never empty
    assert torch.equal(views.active, (position >= start) & (position < torch.clamp(start + block, max=length)))
    assert bool(views.active.any(1).all())
    # the two views partition it
    assert torch.equal(views.first | views.second, views.active)
    assert not bool((views.first & views.second).any())
    # everything after it is hidden in both views; everything before it is clean in both
    assert torch.equal(views.future, position >= start + block)
    response = torch.arange(10, 10 + length).repeat(batch, 1)
    one, two = views.noisy(response, mask_id=0)
    assert torch.equal(one == 0, views.first | views.future)
    assert torch.equal(two == 0, views.second | views.future)
    before = position < start
    assert torch.equal(one[before.expand_as(one)], response[before.expand_as(response)])
    assert torch.equal(two[before.expand_as(two)], response[before.expand_as(response)])


def test_block_selection_is_uniform_over_the_blocks_that_exist():
    # 96 positions in blocks of 32: blocks 0, 1, 2 (never an empty block 3, see masking.py)
    views = draw_views(6000, 96, block_length=32, mask_ratio=0.5, generator=_gen(0))
    counts = torch.bincount(views.block, minlength=4)
    assert counts[3] == 0
    assert all(abs(int(c) - 2000) < 150 for c in counts[:3])
    # 80 positions: the last block is the remainder 64..79
    views = draw_views(400, 80, block_length=32, mask_ratio=0.5, generator=_gen(1))
    last = views.block == 2
    assert bool(last.any())
    assert bool((views.active[last].sum(1) == 16).all()) and bool(views.active[last][:, 64:].all())
    assert not bool(views.future[last].any())
    # a single block: always block 0, nothing in the future
    views = draw_views(50, 20, block_length=32, mask_ratio=0.5, generator=_gen(2))
    assert bool((views.block == 0).all()) and bool(views.active.all()) and not bool(views.future.any())


def test_first_view_masks_half_of_the_block_and_draws_follow_the_generator():
    views = draw_views(400, 64, block_length=32, mask_ratio=0.5, generator=_gen(3))
    share = views.first.sum() / views.active.sum()
    assert abs(float(share) - 0.5) < 0.02
    again = draw_views(400, 64, block_length=32, mask_ratio=0.5, generator=_gen(3))
    assert torch.equal(views.first, again.first) and torch.equal(views.block, again.block)
    other = draw_views(400, 64, block_length=32, mask_ratio=0.5, generator=_gen(4))
    assert not torch.equal(views.first, other.first)


@pytest.mark.parametrize("kwargs", [dict(block_length=0, mask_ratio=0.5), dict(block_length=8, mask_ratio=1.0),
                                    dict(block_length=8, mask_ratio=0.0)])
def test_bad_masking_settings_are_errors(kwargs):
    with pytest.raises(ConfigError, match="block_length|mask_ratio"):
        draw_views(2, 16, generator=_gen(0), **kwargs)


def test_a_fixed_ratio_keeps_the_earlier_draws_and_consumes_no_extra_randomness():
    views = draw_views(50, 64, block_length=32, mask_ratio=MaskRatio("fixed", 0.3), generator=_gen(5))
    g = _gen(5)
    block = torch.randint(2, (50,), generator=g)
    coin = torch.rand(50, 64, generator=g) < 0.3
    assert torch.equal(views.block, block) and torch.equal(views.first, views.active & coin)
    g = _gen(6)
    state = g.get_state()
    assert MaskRatio("fixed", 0.3).draw(7, g).tolist() == pytest.approx([0.3] * 7)
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("distribution, mean, above", [("uniform", 0.5, 0.1), ("high", 0.75, 1 - 0.9 ** 3)])
def test_ratio_distributions_and_the_views_that_follow_them(distribution, mean, above):
    ratio = MaskRatio(distribution)
    r = ratio.draw(40_000, _gen(0))
    assert bool(((r >= 0) & (r <= 1)).all())
    assert float(r.mean()) == pytest.approx(mean, abs=0.01)
    assert float((r > 0.9).float().mean()) == pytest.approx(above, abs=0.01)
    # per sample, the first view masks about its drawn share of the block; the second the rest
    views = draw_views(4000, 64, block_length=64, mask_ratio=ratio, generator=_gen(1))
    share = views.first.sum(1) / views.active.sum(1)
    assert float(share.mean()) == pytest.approx(mean, abs=0.015)
    assert float((share > 0.9).float().mean()) == pytest.approx(above, abs=0.03)
    assert torch.equal(views.first | views.second, views.active) and not bool((views.first & views.second).any())


def test_high_with_skew_one_is_the_uniform_draw():
    assert torch.equal(MaskRatio("high", skew=1.0).draw(9, _gen(3)), MaskRatio("uniform").draw(9, _gen(3)))
    assert float(MaskRatio("high", skew=9.0).draw(20_000, _gen(4)).mean()) == pytest.approx(0.9, abs=0.01)


def test_per_sample_lengths_draw_each_samples_block_among_its_own():
    lengths = torch.tensor([40, 96, 20, 65]).repeat(1500)  # blocks of 32: 2, 3, 1 and 3
    views = draw_views(6000, 96, block_length=32, mask_ratio=0.5, generator=_gen(2), lengths=lengths)
    position = torch.arange(96)[None, :]
    beyond = position >= lengths[:, None]
    assert not bool((views.active & beyond).any()) and not bool((views.future & beyond).any())
    for length, count in ((40, 2), (96, 3), (20, 1), (65, 3)):
        rows = lengths == length
        seen = torch.bincount(views.block[rows], minlength=count)
        assert len(seen) == count and all(abs(int(c) - 1500 / count) < 120 for c in seen)
    # the last block of a 40-token response is its 8 remaining positions; nothing after it
    last = (lengths == 40) & (views.block == 1)
    assert bool((views.active[last].sum(1) == 8).all()) and not bool(views.future[last].any())
    with pytest.raises(ConfigError, match="1..96"):
        draw_views(2, 96, block_length=32, generator=_gen(0), lengths=torch.tensor([97, 5]))


def test_shift_places_each_samples_views_at_its_response_start():
    views = draw_views(2, 8, block_length=4, mask_ratio=0.5, generator=_gen(7), lengths=torch.tensor([8, 5]))
    moved = views.shift(torch.tensor([0, 3]), 11)
    for name in ("active", "first", "second", "future"):
        before, after = getattr(views, name), getattr(moved, name)
        assert torch.equal(after[0, :8], before[0]) and not bool(after[0, 8:].any())
        assert not bool(after[1, :3].any()) and torch.equal(after[1, 3:], before[1])


# ----------------------------------------------------------------------------- loss terms

def _entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def _softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


# one sample, 3 positions, vocabulary of 3; targets 0, 1, 2
LOGITS = torch.tensor([[[2.0, 0.5, -1.0],     # argmax 0 == target 0: right
                        [1.5, 0.2, 0.1],      # argmax 0 != target 1: wrong
                        [0.0, 0.3, 1.0]]],    # argmax 2 == target 2: right
                      dtype=torch.float64)
TARGETS = torch.tensor([[0, 1, 2]])


def test_cross_entropy_is_the_mean_over_the_views_masked_positions():
    masked = torch.tensor([[True, True, False]])
    ce, _, count, _ = cf_loss.view_terms(LOGITS, TARGETS, masked)
    want = (-math.log(_softmax([2.0, 0.5, -1.0])[0]) - math.log(_softmax([1.5, 0.2, 0.1])[1])) / 2
    assert count.tolist() == [2]
    assert ce.item() == pytest.approx(want, rel=1e-9)


def test_certainty_term_only_touches_masked_positions_already_right_at_temperature_half():
    masked = torch.tensor([[True, True, False]])  # position 2 is right but not masked: excluded
    logits = LOGITS.clone().requires_grad_(True)
    _, h, _, right = cf_loss.view_terms(logits, TARGETS, masked)
    assert right.tolist() == [1]
    want = _entropy(_softmax([2.0, 0.5, -1.0], temperature=0.5))  # only position 0
    assert h.item() == pytest.approx(want, rel=1e-9)
    assert h.item() != pytest.approx(_entropy(_softmax([2.0, 0.5, -1.0])), rel=1e-3)  # not temperature 1
    h.sum().backward()
    assert logits.grad[0, 0].abs().sum() > 0
    assert torch.equal(logits.grad[0, 1:], torch.zeros(2, 3, dtype=torch.float64))  # wrong / unmasked untouched
    # with both right positions masked it is their mean
    _, h2, _, right2 = cf_loss.view_terms(LOGITS, TARGETS, torch.tensor([[True, True, True]]))
    assert right2.tolist() == [2]
    both = (_entropy(_softmax([2.0, 0.5, -1.0], 0.5)) + _entropy(_softmax([0.0, 0.3, 1.0], 0.5))) / 2
    assert h2.item() == pytest.approx(both, rel=1e-9)
    # another temperature gives another value
    _, h3, _, _ = cf_loss.view_terms(LOGITS, TARGETS, masked, temperature=1.0)
    assert h3.item() == pytest.approx(_entropy(_softmax([2.0, 0.5, -1.0])), rel=1e-9)


def test_total_is_ce_of_both_views_plus_weighted_certainty():
    first = torch.tensor([[True, False, True]])
    second = torch.tensor([[False, True, False]])
    other = LOGITS.flip(-1)
    terms = cf_loss.certainty_forcing_loss(LOGITS, other, TARGETS, first, second)
    ce1, h1, _, _ = cf_loss.view_terms(LOGITS, TARGETS, first)
    ce2, h2, _, _ = cf_loss.view_terms(other, TARGETS, second)
    assert cf_loss.LLADA_WEIGHT == 2.0 and cf_loss.TEMPERATURE == 0.5
    assert terms.total.item() == pytest.approx((ce1 + ce2 + 2.0 * (h1 + h2)).item(), rel=1e-12)
    dream = cf_loss.certainty_forcing_loss(LOGITS, other, TARGETS, first, second, entropy_weight=1.0)
    assert dream.total.item() == pytest.approx((ce1 + ce2 + h1 + h2).item(), rel=1e-12)
    assert terms.masked.tolist() == [[2], [1]]


def test_each_sample_weighs_the_same_and_empty_views_give_zero():
    logits = LOGITS.repeat(2, 1, 1)
    targets = TARGETS.repeat(2, 1)
    masked = torch.tensor([[True, False, False], [True, True, True]])
    ce, h, _, _ = cf_loss.view_terms(logits, targets, masked)
    one = -math.log(_softmax([2.0, 0.5, -1.0])[0])
    assert ce[0].item() == pytest.approx(one, rel=1e-9)  # its own mean, not diluted by sample 1's positions
    nothing = torch.zeros(2, 3, dtype=torch.bool)
    ce0, h0, count0, right0 = cf_loss.view_terms(logits, targets, nothing)
    assert ce0.tolist() == [0.0, 0.0] and h0.tolist() == [0.0, 0.0] and count0.tolist() == [0, 0]
    wrong_only = torch.tensor([[False, True, False], [False, True, False]])
    _, h_wrong, _, right_wrong = cf_loss.view_terms(logits, targets, wrong_only)
    assert h_wrong.tolist() == [0.0, 0.0] and right_wrong.tolist() == [0, 0]


def test_bad_loss_settings_are_errors():
    masked = torch.tensor([[True, False, False]])
    with pytest.raises(ConfigError, match="temperature"):
        cf_loss.view_terms(LOGITS, TARGETS, masked, temperature=0.0)
    with pytest.raises(ConfigError, match="entropy_weight"):
        cf_loss.certainty_forcing_loss(LOGITS, LOGITS, TARGETS, masked, masked, entropy_weight=-1.0)


# ----------------------------------------------------------------------------- trajectories

def test_the_filter_compares_the_final_answer():
    assert tr.is_correct("7 + 5 = 12 . #### 12", 12)
    assert not tr.is_correct("7 + 5 = 12 . #### 13", 12)
    assert not tr.is_correct("7 + 5 = 12 .", 12)
    assert tr.final_answer("#### -3 and #### 4") == -3
    assert tr.final_answer("The answer is 1,024.", r"answer is\s*([\d,]+)") == 1024
    assert tr.final_answer("The answer is x", r"answer is\s*(\w+)") is None

    for text in ("1 + 2 = 3 . #### 3", "#### 30 #### 3", "3", "#### -4", "so 9 - 2 = 7 . ####7 <|eot_id|>"):
        for answer in (3, 30, -4, 7):
            assert tr.is_correct(text, answer) == (extract_answer(text) == answer)


def _scripted_teacher(text: str, gen_length: int):
    """A fake teacher whose response is always ``text`` then end-of-text (whatever the prompt)."""

    tok = build_tokenizer()
    script = tok(text, add_special_tokens=False)["input_ids"]
    script = script + [tok.eos_token_id] * (gen_length - len(script))
    vocab = len(tok)

    def logits(input_ids):
        out = torch.zeros(input_ids.shape[0], input_ids.shape[1], vocab)
        out[:, -gen_length:] = 10.0 * torch.nn.functional.one_hot(torch.tensor(script), vocab)
        return out

    return FakeModel(logits_fn=logits, vocab_size=vocab, mask_id=tok.mask_token_id,
                     eot_ids=(tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")), fill_id=tok.eos_token_id,
                     tokenizer=tok), script


def test_teacher_trajectories_keep_only_correct_answers_and_the_teachers_own_tokens():
    model, script = _scripted_teacher("3 + 4 = 7 . #### 7 <|eot_id|>", 16)
    problems = [Problem("Tom has 3 apples . He buys 4 more . How many apples does Tom have now ?", "", 7),
                Problem("Ann has 9 coins . She loses 1 . How many coins does Ann have now ?", "", 8),
                Problem("Sam has 5 toys . He finds 2 more . How many toys does Sam have now ?", "", 7)]
    config = tr.TrajectoryConfig(gen_length=16, block_length=8, batch_size=2)
    table = tr.teacher_trajectories(model, problems, config, progress=False)
    assert table["correct"] == [True, False, True] and table["predicted"] == [7, 7, 7]
    response = script[:script.index(model.fill_id)]  # trailing end-of-text removed
    assert all(r == response for r in table["response_ids"])
    for row, problem in zip(table, problems, strict=True):
        ids, _ = encode_prompts(model, [problem.question], chat=True)
        assert row["prompt_ids"] == ids[0].tolist()
    kept = tr.keep_rows(table, "correct")
    assert kept["answer"] == [7, 7] and len(tr.keep_rows(table, "all")) == 3
    with pytest.raises(ConfigError, match="keep"):
        tr.keep_rows(table, "some")


def test_decoded_batches_are_kept_and_a_rerun_continues_from_them(tmp_path, monkeypatch):
    model, _ = _scripted_teacher("3 + 4 = 7 . #### 7 <|eot_id|>", 16)
    problems = [Problem(f"Tom has {i} apples . How many apples does Tom have now ?", "", 7) for i in range(5)]
    config = tr.TrajectoryConfig(gen_length=16, block_length=8, batch_size=2)
    decoded = []
    original = tr._decode_chunk
    monkeypatch.setattr(tr, "_decode_chunk", lambda m, chunk, c: decoded.append(len(chunk)) or original(m, chunk, c))
    parts = tmp_path / "parts"
    first = tr.teacher_trajectories(model, problems[:3], config, progress=False, parts=parts, settings={"seed": 1})
    assert decoded == [2, 1] and sorted(f.name for f in parts.glob("0*.json")) == ["0000000.json", "0000002.json"]
    # a longer run of the same problems: the full batch is read back, the partial one decoded again in full
    again = tr.teacher_trajectories(model, problems, config, progress=False, parts=parts, settings={"seed": 1})
    assert decoded == [2, 1, 2, 1] and again["question"][:3] == first["question"] and len(again) == 5
    assert tr.decode_seconds(parts) >= 0
    tr.teacher_trajectories(model, problems, config, progress=False, parts=parts, settings={"seed": 1})
    assert decoded == [2, 1, 2, 1]  # everything from the parts
    with pytest.raises(ConfigError, match="seed differ"):
        tr.teacher_trajectories(model, problems, config, progress=False, parts=parts, settings={"seed": 2})
    with pytest.raises(ConfigError, match="other problems"):
        tr.teacher_trajectories(model, problems[::-1], config, progress=False, parts=parts, settings={"seed": 1})


def test_a_second_worker_decodes_the_later_batches_and_a_full_run_reads_them_all(tmp_path, monkeypatch):
    model, _ = _scripted_teacher("3 + 4 = 7 . #### 7 <|eot_id|>", 16)
    problems = [Problem(f"Tom has {i} apples . How many apples does Tom have now ?", "", 7) for i in range(6)]
    config = tr.TrajectoryConfig(gen_length=16, block_length=8, batch_size=2)
    decoded = []
    original = tr._decode_chunk
    monkeypatch.setattr(tr, "_decode_chunk", lambda m, chunk, c: decoded.append(chunk[0].question) or original(m, chunk, c))
    parts = tmp_path / "parts"
    later = tr.teacher_trajectories(model, problems, config, progress=False, parts=parts, settings={"seed": 1}, first=4)
    assert later["question"] == [p.question for p in problems[4:]] and decoded == [problems[4].question]
    whole = tr.teacher_trajectories(model, problems, config, progress=False, parts=parts, settings={"seed": 1})
    assert whole["question"] == [p.question for p in problems]
    assert decoded == [problems[4].question, problems[0].question, problems[2].question]  # batch 4 read back
    for bad in (3, 6):  # not a batch start; past the problems
        with pytest.raises(ConfigError, match="multiple of the batch size"):
            tr.teacher_trajectories(model, problems, config, progress=False, parts=parts, settings={"seed": 1}, first=bad)
    with pytest.raises(ConfigError, match="parts directory"):
        tr.teacher_trajectories(model, problems, config, progress=False, first=2)


def test_the_teachers_weights_are_identified_wherever_they_lie(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"x" * 100)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert tr.weights_fingerprint(tmp_path / "a") == tr.weights_fingerprint(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"y" * 100)
    assert tr.weights_fingerprint(tmp_path / "a") != tr.weights_fingerprint(tmp_path / "b")


def test_trailing_fill_count():
    tokens = torch.tensor([[5, 1, 1], [1, 5, 6], [1, 1, 1]])
    assert tr.trailing_count(tokens, 1).tolist() == [2, 0, 3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(gen_length=64, block_length=24), "divide"),
    (dict(keep="some"), "keep"),
    (dict(answer_pattern="#### \\d+"), "group"),
    (dict(answer_pattern="(unclosed"), "regular expression"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_trajectory_settings_are_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tr.TrajectoryConfig(**kwargs)


def test_missing_trajectories_and_problem_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="distill trajectories"):
        tr.load_trajectories(tmp_path)
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"question": "q", "answer": "seven"}\n')
    with pytest.raises(ConfigError, match="p.jsonl:1"):
        tr.read_problems(bad)
    good = tmp_path / "q.jsonl"
    good.write_text('{"question": "q", "answer": 7}\n\n')
    assert tr.read_problems(good) == [Problem("q", "", 7)]


# ----------------------------------------------------------------------------- the diagnostic

def test_answer_and_tail_blocks_are_read_from_the_first_end_token():
    targets = torch.tensor([[5, 6, 7, 1, 1, 1, 1, 1], [5, 2, 1, 1, 1, 1, 1, 1], [5, 6, 7, 8, 9, 5, 6, 7],
                            [1, 1, 1, 1, 1, 1, 1, 1]])
    answer = ops.first_index_of(targets, [1, 2])
    assert answer.tolist() == [3, 1, 8, 0]
    assert ops.answer_blocks(answer, 4, 2).tolist() == [[True, True, False, False], [True, False, False, False],
                                                  [True, True, True, True], [False, False, False, False]]


def test_visited_states_rebuild_every_forward_of_a_decode():
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=11)
    prompts = [[20, 21, 22, 23], [30, 31]]
    result = decode(model, prompts, strategy="entropy_threshold(tau=0.5)", gen_length=16, block_length=8,
                    chat=False)
    states = visited_states(result.tokens, result.commit_step, result.steps, 8, model.mask_id)
    assert len(states.row) == int(result.steps.sum()) and states.step.tolist()[:int(result.steps[0])] == \
        list(range(int(result.steps[0])))
    # replaying a state gives back what that step committed: its argmax at the committed positions
    ids, mask = encode_prompts(model, prompts)
    for i in range(len(states.row)):
        r, s = int(states.row[i]), int(states.step[i])
        now = result.commit_step[r] == s
        assert bool(now.any()) and bool((states.hidden[i] & ~states.in_block[i] & (torch.arange(16) < 8 *
                                                                                  states.block[i])).sum() == 0)
        full = torch.cat([ids[r:r + 1], states.context[i:i + 1]], 1)
        attention = torch.cat([mask[r:r + 1], torch.ones(1, 16, dtype=torch.bool)], 1).long()
        with torch.no_grad():
            logits = model.logits(full, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
                                  logits_to_keep=16)[0]
        assert torch.equal(logits.argmax(-1)[now], result.tokens[r][now])
        assert bool((states.in_block[i] | ~now).all())  # a step commits only inside its block


def test_the_diagnostic_of_a_certain_teacher_on_its_own_trajectories():
    model, script = _scripted_teacher("3 + 4 = 7 . #### 7 <|eot_id|>", 32)
    response = script[:script.index(model.fill_id)]
    prompts = [[5, 6, 7], [8, 9]]
    report = diagnose(model, prompts, [response, response], gen_length=32,
                      config=DiagnosticConfig(ratios=(0.5, 1.0), block_length=8), answers=[7, 8])
    rows = {(r["state"], r["kind"]): r for r in report["rows"]}
    assert set(rows) == {(s, k) for s in ("ratio 0.5", "ratio 1", "visited", "visited, teacher context")
                         for k in ("answer", "tail")}
    answer_blocks = -(-response.index(model.eot_ids[1]) // 8)  # the answer ends before end-of-turn
    assert answer_blocks == 1
    # at ratio 1 every position of every block is masked once: the answer blocks, then the tail
    assert rows["ratio 1", "answer"]["positions"] == 2 * 8 * answer_blocks
    assert rows["ratio 1", "tail"]["positions"] == 2 * (32 - 8 * answer_blocks)
    for row in report["rows"]:
        assert row["accuracy"] == 1.0 and row["certain"] == 1.0 and 0 < row["ce"] < 0.05
        assert 0 < row["certainty"] < row["entropy"]  # temperature 0.5 sharpens
    # a certain teacher commits each block in one forward and reproduces its trajectory
    visited = report["visited"]
    assert visited["answer_forwards"] == answer_blocks and visited["tail_forwards"] == 4 - answer_blocks
    assert visited["reproduced"] == 1.0 and visited["accuracy"] == 0.5
    assert "| ratio 1 | answer |" in markdown(report)
    first = diagnose(model, prompts, [response, response], gen_length=32,
                     config=DiagnosticConfig(ratios=(1.0,), blocks=1, block_length=8, visited=None))
    assert [(r["kind"], r["positions"]) for r in first["rows"]] == [("answer", 16), ("tail", 0)]
    assert first["visited"] is None
    with pytest.raises(ConfigError, match="revokes"):
        diagnose(model, prompts, [response, response], gen_length=32,
                 config=DiagnosticConfig(ratios=(1.0,), block_length=8, visited="wino"))
    with pytest.raises(ConfigError, match="ratios"):
        DiagnosticConfig(ratios=(0.0,))


# ----------------------------------------------------------------------------- training

def test_batches_walk_each_epoch_once():
    seen = torch.cat([batch_indices(10, 4, seed=3, step=s) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])
    assert torch.equal(batch_indices(10, 4, 3, 2), batch_indices(10, 4, 3, 2))
    assert not torch.equal(batch_indices(10, 4, 3, 0), batch_indices(10, 4, 4, 0))
    wide = batch_indices(3, 7, 0, 0).tolist()  # a batch wider than the data: whole epochs, then a part
    assert sorted(wide[:3]) == sorted(wide[3:6]) == [0, 1, 2] and 0 <= wide[6] < 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(steps=1, lr=0.0), "lr"), (dict(steps=1, mask_ratio=1.0), "mask_ratio"),
    (dict(steps=1, temperature=0.0), "temperature"), (dict(steps=1, entropy_weight=-1.0), "entropy_weight"),
    (dict(steps=1, micro_batch_size=-1), "micro_batch_size"), (dict(steps=1, lora_rank=4, lora_targets=()), "LoRA"),
    (dict(steps=1, mask_distribution="beta"), "distribution"), (dict(steps=1, mask_skew=0.0), "skew"),
])
def test_bad_training_settings_are_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**{"total_length": 64, **kwargs})


@pytest.mark.parametrize("lengths", [dict(), dict(total_length=64, pad_length=32), dict(total_length=-1)])
def test_exactly_one_layout_length_is_set(lengths):
    with pytest.raises(ConfigError, match="total_length|pad_length"):
        DistillConfig(steps=1, **lengths)


def test_default_total_length_is_the_longest_prompt_and_blocks_for_the_longest_answer():
    short = [([1] * 40, [5] * 21 + [2] * 43), ([1] * 57, [5] * 30 + [2] * 34), ([1] * 3, [5] * 9 + [2] * 55)]
    assert default_total_length(short, 32, (2,)) == 57 + 64  # answers fit two blocks: two
    long = [([1] * 80, [5] * 116 + [2] * 12), ([1] * 90, [5] * 70 + [2] * 58)]
    assert default_total_length(long, 32, (2,)) == 90 + 128  # the longest answer needs four
    assert default_total_length([([1] * 4, [5] * 64)], 32, (2,)) == 4 + 64  # no end-of-text: the whole response


def test_the_authors_layout_cuts_or_pads_prompt_and_response_to_one_total_length():
    config = DistillConfig(steps=1, total_length=8, block_length=2)
    placed = layout([[1, 2, 3], [4, 5]], [[10, 11, 12, 13, 14, 15, 16], [20]], config, pad_id=0, fill_id=9)
    assert placed.batch.input_ids.tolist() == [[1, 2, 3, 10, 11, 12, 13, 14], [4, 5, 20, 9, 9, 9, 9, 9]]
    assert bool(placed.batch.attention_mask.all()) and placed.batch.position_ids.tolist() == [list(range(8))] * 2
    assert placed.batch.gen_length == 6  # the region after the shortest prompt
    assert placed.offsets.tolist() == [1, 0] and placed.lengths.tolist() == [5, 6]
    padded = layout([[1, 2, 3], [4, 5]], [[10, 11], [20]], DistillConfig(steps=1, pad_length=4), pad_id=0, fill_id=9)
    assert padded.batch.input_ids.tolist() == [[1, 2, 3, 10, 11, 9, 9], [0, 4, 5, 20, 9, 9, 9]]
    assert padded.offsets.tolist() == [0, 0] and padded.lengths.tolist() == [4, 4]


def test_in_the_authors_layout_a_samples_loss_does_not_depend_on_its_batch():
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2, seed=3)
    config = DistillConfig(steps=1, total_length=20, block_length=4, mask_distribution="uniform")
    pairs = _pairs(5, seed=4)
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    lengths = torch.tensor([20 - len(p) for p in prompts])
    views = draw_views(5, 20, block_length=4, mask_ratio=config.masking, generator=_gen(1), lengths=lengths)
    placed = layout(prompts, responses, config, 0, model.fill_id)
    with torch.no_grad():
        together = batch_terms(model, placed.batch, views.shift(placed.offsets, placed.batch.gen_length), config)
        for i in range(5):
            alone = layout(prompts[i:i + 1], responses[i:i + 1], config, 0, model.fill_id)
            one = views.take(slice(i, i + 1)).shift(alone.offsets, alone.batch.gen_length)
            terms = batch_terms(model, alone.batch, one, config)
            torch.testing.assert_close(terms.per_sample[0], together.per_sample[i], rtol=1e-4, atol=1e-5)
            assert terms.masked[:, 0].tolist() == together.masked[:, i].tolist()
    assert int(together.masked.sum()) == int(views.active.sum())  # every active position is a target once


def _pairs(n: int = 8, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(20, 60, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(20, 60, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        out.append((p, r))
    return out


def test_a_response_longer_than_the_pad_length_is_an_error(tmp_path):
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2)
    with pytest.raises(ConfigError, match="pad length to at least 11"):
        distill(model, [([5, 6], list(range(20, 31)))], config=DistillConfig(steps=1, pad_length=8, block_length=4),
                output_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="leaves no response within total_length=6"):
        distill(model, [([5, 6, 7, 8, 9, 10], [20])], config=DistillConfig(steps=1, total_length=6, block_length=4),
                output_dir=tmp_path, progress=False)


def test_distillation_fits_the_targets_and_certainty_forcing_sharpens_them(tmp_path):
    g = _gen(0)
    pairs = [(torch.randint(20, 60, (5,), generator=g).tolist(), list(range(30, 42))) for _ in range(8)]
    batch = collate([p for p, _ in pairs], [r for _, r in pairs], 16, 1, 1)
    views = draw_views(8, 16, block_length=8, mask_ratio=0.5, generator=_gen(9))
    after = {}
    for weight in (0.0, 2.0):
        model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=5)
        config = DistillConfig(steps=40, batch_size=8, lr=1e-2, pad_length=16, block_length=8, log_every=40,
                               entropy_weight=weight)
        with torch.no_grad():
            before = batch_terms(model, batch, views, config).summary()
        outcome = distill(model, pairs, config=config, output_dir=tmp_path / str(weight), progress=False)
        assert outcome.finished and outcome.step == 40 and [r["step"] for r in outcome.records] == [40]
        assert not any(p.requires_grad for p in model.module.parameters())
        with torch.no_grad():
            after[weight] = batch_terms(model, batch, views, config).summary()
        assert after[weight]["ce"] < 0.6 * before["ce"]
        assert after[weight]["correct"] > before["correct"]
    # the certainty term makes the positions it already gets right far more certain
    assert after[2.0]["entropy"] < 0.5 * after[0.0]["entropy"]


@pytest.mark.parametrize("lengths", [dict(pad_length=16), dict(total_length=20, mask_distribution="high")])
def test_micro_batches_accumulate_to_the_whole_batch_step(tmp_path, lengths):
    weights = []
    for micro in (0, 1):
        model = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2, seed=8)
        config = DistillConfig(steps=2, batch_size=4, micro_batch_size=micro, lr=1e-2, block_length=8, **lengths)
        distill(model, _pairs(6), config=config, output_dir=tmp_path / str(micro), progress=False)
        weights.append({n: p.detach().clone() for n, p in model.module.named_parameters()})
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], atol=2e-5, rtol=1e-4)


def test_lora_trains_only_adapters_and_merges_into_a_plain_llama(tmp_path):
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=6)
    with pytest.raises(ConfigError, match="not found"):
        attach_lora(model.module, DistillConfig(steps=1, pad_length=16, lora_rank=4, lora_targets=("qkv",)))
    frozen = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    config = DistillConfig(steps=3, batch_size=4, lr=1e-2, pad_length=16, block_length=8, lora_rank=4)
    outcome = distill(model, _pairs(4), config=config, output_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["trainable"] and all("lora_" in name for name in saved["trainable"])
    assert outcome.finished
    merged = dict(model.module.named_parameters())
    assert set(merged) == set(frozen)  # adapters merged away: the Llama's own names only
    assert type(model.module.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           frozen["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], frozen["model.embed_tokens.weight"])


def test_the_large_model_options_run_bf16_lora_with_gradient_checkpointing(tmp_path):
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=9, dtype=torch.bfloat16)
    before = model.module.model.layers[1].mlp.down_proj.weight.detach().clone()
    config = DistillConfig(steps=2, batch_size=2, micro_batch_size=1, lr=1e-2, pad_length=16, block_length=8,
                           lora_rank=4, gradient_checkpointing=True, log_every=1)
    outcome = distill(model, _pairs(4), config=config, output_dir=tmp_path, progress=False)
    assert all(math.isfinite(r["loss"]) for r in outcome.records)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.module.modules())
    after = model.module.model.layers[1].mlp.down_proj.weight
    assert after.dtype == torch.bfloat16 and not torch.equal(after, before)


def test_llada_layout_student_is_written_back_in_llada_layout(tmp_path):

    teacher = write_llada(tmp_path / "LLaDA-tiny", shards=2)
    model = load_model(str(teacher), device="cpu", dtype="float32")
    config = DistillConfig(steps=2, batch_size=2, lr=1e-2, pad_length=8, block_length=4, lora_rank=2)
    pairs = [([1, 2, 3], [5, 6, 59]), ([4, 7], [8, 9, 10, 59])]
    distill(model, pairs, config=config, output_dir=tmp_path / "work", progress=False)
    out = save_student(model, tmp_path / "student", source=teacher)
    names = set(load_file(str(out / "model.safetensors")))
    assert "model.transformer.blocks.0.q_proj.weight" in names and not any("lora" in n for n in names)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llada"
    student = load_model(str(out), device="cpu", dtype="float32")
    assert student.family is families.LLADA and student.mask_id == 60
    ids = torch.tensor([[1, 2, 60, 60, 5]])
    with torch.no_grad():
        torch.testing.assert_close(student.logits(ids), model.logits(ids))
    with pytest.raises(ModelError, match="overwrite its teacher"):
        save_student(model, teacher, source=teacher)


# ----------------------------------------------------------------------------- the CLI, end to end

@pytest.fixture(scope="module")
def micro_teacher(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("teacher") / "micro"
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=7, max_positions=256)
    model.module.save_pretrained(str(directory))
    model.tokenizer.save_pretrained(str(directory))
    return directory


def _train_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["distill", "train", "--data", str(data), "--output", str(output), "--steps", "4", "--batch-size", "4",
            "--micro-batch-size", "2", "--block-length", "16", "--lr", "1e-3", "--save-every", "1",
            "--device", "cpu", "--quiet", *extra]


def test_cli_trajectories_then_train_with_a_resume(micro_teacher, tmp_path, capsys):
    data = tmp_path / "trajectories"
    assert main(["distill", "trajectories", "--teacher", str(micro_teacher), "--output", str(data),
                 "--problems", "6", "--gen-length", "32", "--block-length", "16", "--batch-size", "4",
                 "--keep", "all", "--device", "cpu", "--quiet"]) == 0
    table, meta = tr.load_trajectories(data)
    assert len(table) == 6 and meta["decoded"] == 6 and meta["config"]["gen_length"] == 32

    held_out = {p.question for p in arith_task.test_problems() + validation_problems()}
    assert not held_out & set(table["question"])  # training problems: never a test or validation question
    val = tmp_path / "validation"
    assert main(["distill", "trajectories", "--teacher", str(micro_teacher), "--output", str(val), "--split",
                 "validation", "--problems", "2", "--gen-length", "32", "--block-length", "16", "--keep", "all",
                 "--device", "cpu", "--quiet"]) == 0
    assert tr.load_trajectories(val)[0]["question"] == [p.question for p in validation_problems()[:2]]
    assert all(len(r) <= 32 and (not r or r[-1] != 1) for r in table["response_ids"])  # 1: end-of-text
    capsys.readouterr()

    # interrupted after 2 of 4 steps, then resumed
    resumed = tmp_path / "resumed"
    assert main(_train_args(data, resumed, "--stop-at", "2")) == 0
    assert "stopped at step 2 of 4" in capsys.readouterr().out
    assert not (resumed / "model.safetensors").exists()
    assert main(_train_args(data, resumed, "--lr", "2e-3")) == 2  # other settings: refused
    assert "lr differ" in capsys.readouterr().err
    assert main(_train_args(data, resumed)) == 0
    straight = tmp_path / "straight"
    assert main(_train_args(data, straight)) == 0
    a, b = load_file(str(resumed / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    teacher = load_file(str(micro_teacher / "model.safetensors"))
    assert any(not torch.equal(a[k], teacher[k]) for k in a)

    report = json.loads((straight / "distillation.json").read_text())
    longest_prompt = max(len(p) for p in table["prompt_ids"])
    assert report["config"]["total_length"] == longest_prompt + 2 * 16 and report["config"]["pad_length"] == 0
    assert report["config"]["mask_distribution"] == "fixed" and report["config"]["entropy_weight"] == 2.0
    assert [r["step"] for r in report["records"]] == [4] and report["rows"] == 6
    # the diagnostic of the student on its teacher's trajectories
    capsys.readouterr()
    assert main(["distill", "diagnose", "--model", str(straight), "--data", str(data), "--rows", "2", "--blocks", "1",
                 "--ratios", "1.0", "--block-length", "16", "--json", str(tmp_path / "d.json"), "--device", "cpu",
                 "--quiet"]) == 0
    assert "| ratio 1 | answer |" in capsys.readouterr().out
    diagnosed = json.loads((tmp_path / "d.json").read_text())
    assert diagnosed["trajectories"] == 2 and diagnosed["visited"]["strategy"] == "entropy_threshold(tau=0.5)"

    student = load_model(str(straight), device="cpu")
    result = __import__("dllm_strategies").decode(student, ["Tom has 3 apples ."], strategy="entropy_threshold",
                                                  gen_length=32, block_length=16, chat=True)
    assert not (result.tokens == student.mask_id).any()


def test_default_dparallel_is_registered_with_its_decoding():
    entry = installed_models()["default-dparallel"]
    assert entry["strategy"] == "entropy_threshold(tau=0.5)" and entry["block_length"] == 32
    assert entry["path"].parts[-3:] == ("dllm_certainty_forcing", "assets", "default-dparallel")
    assert "distill" in entry["description"]
    assert (entry["path"] / "model.safetensors").stat().st_size < 20 * 2**20, "the shipped checkpoint must stay under 20 MB"
    record = json.loads((entry["path"] / "distillation.json").read_text())
    assert record["teacher"] == "default" and record["config"]["entropy_weight"] == 2.0


def test_default_dparallel_loads_and_answers_with_its_recommended_decoding():
    entry = installed_models()["default-dparallel"]
    model = load_model("default-dparallel", device="cpu")
    problems = arith_task.test_problems()[:8]
    result = decode(model, [p.question for p in problems], strategy=entry["strategy"], gen_length=64,
                    block_length=entry["block_length"], chat=True)
    assert int(result.nfe.max()) < 64, "the distilled model decodes in fewer forwards than tokens"
    right = sum(extract_answer(text) == p.answer for text, p in zip(result.text, problems, strict=True))
    assert right >= 6, f"only {right}/8 of the first held-out problems right"


def test_long_answer_pair_is_registered_and_its_student_needs_fewer_forwards():
    models = installed_models()
    teacher, student = models["long-answer"], models["long-answer-dparallel"]
    assert teacher["path"].parts[-3:] == ("dllm_arith", "assets", "long-answer")
    assert student["strategy"] == "entropy_threshold(tau=0.5)" and student["block_length"] == 32
    for entry in (teacher, student):
        assert (entry["path"] / "model.safetensors").stat().st_size < 20 * 2**20, "shipped checkpoints stay under 20 MB"
    record = json.loads((student["path"] / "distillation.json").read_text())
    assert record["config"]["mask_distribution"] == "high", "the shipped long student is the high-ratio deviation"

    questions = [p.question for p in ARITH_LONG.test_problems()[:8]]
    nfe = {}
    for name in ("long-answer", "long-answer-dparallel"):
        result = decode(load_model(name, device="cpu"), questions, strategy=student["strategy"], gen_length=128,
                        block_length=student["block_length"], chat=True)
        nfe[name] = int(result.nfe.sum())
    assert nfe["long-answer-dparallel"] < 0.8 * nfe["long-answer"], nfe
