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
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from dllm_certainty_forcing import loss as cf_loss
from dllm_certainty_forcing import trajectories as tr
from dllm_certainty_forcing.commands import default_pad_length
from dllm_certainty_forcing.masking import block_count, draw_views
from dllm_certainty_forcing.training import DistillConfig, attach_lora, batch_indices, distill
from dllm_strategies.arith.task import Problem
from dllm_strategies.errors import ConfigError, ModelError


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
    from dllm_strategies.arith.task import extract_answer

    for text in ("1 + 2 = 3 . #### 3", "#### 30 #### 3", "3", "#### -4", "so 9 - 2 = 7 . ####7 <|eot_id|>"):
        for answer in (3, 30, -4, 7):
            assert tr.is_correct(text, answer) == (extract_answer(text) == answer)


def _scripted_teacher(text: str, gen_length: int):
    """A fake teacher whose response is always ``text`` then end-of-text (whatever the prompt)."""
    from dllm_strategies.arith.tokenizer import build_tokenizer
    from dllm_strategies.testing import FakeModel

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
        from dllm_strategies.decode import encode_prompts

        ids, _ = encode_prompts(model, [problem.question], chat=True)
        assert row["prompt_ids"] == ids[0].tolist()
    kept = tr.keep_rows(table, "correct")
    assert kept["answer"] == [7, 7] and len(tr.keep_rows(table, "all")) == 3
    with pytest.raises(ConfigError, match="keep"):
        tr.keep_rows(table, "some")


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
])
def test_bad_training_settings_are_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**kwargs)


def test_default_pad_length_is_one_and_a_half_gen_lengths_in_whole_blocks():
    assert default_pad_length(64, 32) == 96 and default_pad_length(256, 32) == 384 and default_pad_length(40, 32) == 64


def _pairs(n: int = 8, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(20, 60, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(20, 60, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        out.append((p, r))
    return out


def test_a_response_longer_than_the_pad_length_is_an_error(tmp_path):
    from dllm_strategies.models.tiny import tiny_model

    model = tiny_model(hidden_size=16, num_layers=1, num_heads=2)
    with pytest.raises(ConfigError, match="pad length to at least 11"):
        distill(model, [([5, 6], list(range(20, 31)))], config=DistillConfig(steps=1, pad_length=8, block_length=4),
                output_dir=tmp_path, progress=False)


def test_distillation_fits_the_targets_and_certainty_forcing_sharpens_them(tmp_path):
    from dllm_certainty_forcing.training import batch_terms
    from dllm_strategies.models.tiny import tiny_model
    from dllm_strategies.training.sft import collate

    g = _gen(0)
    pairs = [(torch.randint(20, 60, (5,), generator=g).tolist(), list(range(30, 42))) for _ in range(8)]
    batch = collate([p for p, _ in pairs], [r for _, r in pairs], 16, 1, 1)
    views = draw_views(8, 16, block_length=8, mask_ratio=0.5, generator=_gen(9))
    after = {}
    for weight in (0.0, 2.0):
        model = tiny_model(hidden_size=32, num_layers=2, num_heads=2, seed=5)
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


def test_micro_batches_accumulate_to_the_whole_batch_step(tmp_path):
    from dllm_strategies.models.tiny import tiny_model

    weights = []
    for micro in (0, 1):
        model = tiny_model(hidden_size=16, num_layers=1, num_heads=2, seed=8)
        config = DistillConfig(steps=2, batch_size=4, micro_batch_size=micro, lr=1e-2, pad_length=16, block_length=8)
        distill(model, _pairs(6), config=config, output_dir=tmp_path / str(micro), progress=False)
        weights.append({n: p.detach().clone() for n, p in model.module.named_parameters()})
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], atol=2e-5, rtol=1e-4)


def test_lora_trains_only_adapters_and_merges_into_a_plain_llama(tmp_path):
    from dllm_strategies.models.tiny import tiny_model

    model = tiny_model(hidden_size=32, num_layers=2, num_heads=2, seed=6)
    with pytest.raises(ConfigError, match="not found"):
        attach_lora(model.module, DistillConfig(steps=1, lora_rank=4, lora_targets=("qkv",)))
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
    from dllm_strategies.models.tiny import tiny_model

    model = tiny_model(hidden_size=32, num_layers=2, num_heads=2, seed=9, dtype=torch.bfloat16)
    before = model.module.model.layers[1].mlp.down_proj.weight.detach().clone()
    config = DistillConfig(steps=2, batch_size=2, micro_batch_size=1, lr=1e-2, pad_length=16, block_length=8,
                           lora_rank=4, gradient_checkpointing=True, log_every=1)
    outcome = distill(model, _pairs(4), config=config, output_dir=tmp_path, progress=False)
    assert all(math.isfinite(r["loss"]) for r in outcome.records)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.module.modules())
    after = model.module.model.layers[1].mlp.down_proj.weight
    assert after.dtype == torch.bfloat16 and not torch.equal(after, before)


def test_llada_layout_student_is_written_back_in_llada_layout(tmp_path):
    from test_native_models import write_llada

    from dllm_certainty_forcing.export import save_student
    from dllm_strategies.models import families, load_model

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
    from dllm_strategies.models.tiny import tiny_model

    directory = tmp_path_factory.mktemp("teacher") / "micro"
    model = tiny_model(hidden_size=32, num_layers=2, num_heads=2, seed=7, max_positions=256)
    model.module.save_pretrained(str(directory))
    model.tokenizer.save_pretrained(str(directory))
    return directory


def _train_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["distill", "train", "--data", str(data), "--output", str(output), "--steps", "4", "--batch-size", "4",
            "--micro-batch-size", "2", "--block-length", "16", "--lr", "1e-3", "--save-every", "1",
            "--device", "cpu", "--quiet", *extra]


def test_cli_trajectories_then_train_with_a_resume(micro_teacher, tmp_path, capsys):
    from dllm_strategies.cli import main
    from dllm_strategies.models import load_model

    data = tmp_path / "trajectories"
    assert main(["distill", "trajectories", "--teacher", str(micro_teacher), "--output", str(data),
                 "--problems", "6", "--gen-length", "32", "--block-length", "16", "--batch-size", "4",
                 "--keep", "all", "--device", "cpu", "--quiet"]) == 0
    table, meta = tr.load_trajectories(data)
    assert len(table) == 6 and meta["decoded"] == 6 and meta["config"]["gen_length"] == 32
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
    assert report["config"]["pad_length"] == 48 and report["config"]["entropy_weight"] == 2.0
    assert [r["step"] for r in report["records"]] == [4] and report["rows"] == 6
    student = load_model(str(straight), device="cpu")
    result = __import__("dllm_strategies").decode(student, ["Tom has 3 apples ."], strategy="entropy_threshold",
                                                  gen_length=32, block_length=16, chat=True)
    assert not (result.tokens == student.mask_id).any()


def test_default_dparallel_is_registered_with_its_decoding():
    from dllm_strategies.models import load_model
    from dllm_strategies.registry import installed_models

    entry = installed_models()["default-dparallel"]
    assert entry["strategy"] == "entropy_threshold(tau=0.5)" and entry["block_length"] == 32
    assert entry["path"].parts[-3:] == ("dllm_certainty_forcing", "assets", "default-dparallel")
    assert "distill" in entry["description"]
    assert (entry["path"] / "model.safetensors").stat().st_size < 20 * 2**20, "the shipped checkpoint must stay under 20 MB"
    record = json.loads((entry["path"] / "distillation.json").read_text())
    assert record["teacher"] == "default" and record["config"]["entropy_weight"] == 2.0


def test_default_dparallel_loads_and_answers_with_its_recommended_decoding():
    from dllm_strategies import decode
    from dllm_strategies.arith.task import extract_answer, test_problems
    from dllm_strategies.models import load_model
    from dllm_strategies.registry import installed_models

    entry = installed_models()["default-dparallel"]
    model = load_model("default-dparallel", device="cpu")
    problems = test_problems()[:8]
    result = decode(model, [p.question for p in problems], strategy=entry["strategy"], gen_length=64,
                    block_length=entry["block_length"], chat=True)
    assert int(result.nfe.max()) < 64, "the distilled model decodes in fewer forwards than tokens"
    right = sum(extract_answer(text) == p.answer for text, p in zip(result.text, problems, strict=True))
    assert right >= 6, f"only {right}/8 of the first held-out problems right"
