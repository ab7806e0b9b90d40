"""The harness: metrics (TPF, AUP), LLaDA's Monte Carlo likelihood, the lm-eval model ``dllm``,
the local lm-eval tasks, the ``eval`` launcher and the ``bench`` runner."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_strategies import decode
from dllm_arith import task
from dllm_arith.task import extract_answer
from dllm_arith.tokenizer import prompt_text
from dllm_strategies.errors import ConfigError, SpecError
from dllm_strategies.testing import FakeModel
from dllm_harness import likelihood, local_tasks, matrix, metrics

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from dllm_harness.lm_eval_model import DllmLM  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random bidirectional Llama saved as a checkpoint directory (load_model reads it)."""
    from dllm_strategies.models.tiny import tiny_model

    path = tmp_path_factory.mktemp("tiny-ckpt")
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=1)
    model.module.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return local_tasks.render_tasks(tmp_path_factory.mktemp("tasks"))


def _request(kind, args, doc_id=0, task="t", idx=0, repeats=1):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx, metadata=(task, doc_id, repeats))


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------
def test_aup_reproduces_a_hand_computed_value():
    # y_1 = 80 (lowest TPF); (4, 70) is more than 5 below y_1 and is dropped; y_max = 82 (another method).
    points = [(4.0, 70.0), (2.0, 78.0), (1.0, 80.0), (3.0, 76.0)]
    w80, w78, w76 = math.exp(-3 * (1 - 80 / 82)), math.exp(-3 * (1 - 78 / 82)), math.exp(-3 * (1 - 76 / 82))
    by_hand = 1.0 * 80 + (2 - 1) * (78 * w78 + 80 * w80) / 2 + (3 - 2) * (76 * w76 + 78 * w78) / 2
    assert by_hand == pytest.approx(215.0694, abs=1e-3)
    assert metrics.aup(points, y_max=82.0) == pytest.approx(by_hand, rel=1e-12)


def test_aup_single_point_is_tpf_times_accuracy_and_weight_caps_at_one():
    assert metrics.aup([(1.0, 72.55)], y_max=72.55) == pytest.approx(72.55)  # LLaDA's row on d3LLM's board
    assert metrics.aup_weight(90.0, 90.0) == 1.0
    # the best method's own points are weighted 1: a flat curve at y_max is TPF_max * y_max
    assert metrics.aup([(1.0, 50.0), (3.0, 50.0)], y_max=50.0) == pytest.approx(150.0)


def test_aup_rejects_bad_input():
    with pytest.raises(ConfigError, match="at least one"):
        metrics.aup([], y_max=50.0)
    with pytest.raises(ConfigError, match="y_max"):
        metrics.aup([(1.0, 60.0)], y_max=50.0)
    with pytest.raises(ConfigError, match="TPF must be > 0"):
        metrics.aup([(0.0, 10.0)], y_max=50.0)


def test_tpf_is_a_ratio_of_sums_and_answers_stop_at_end_of_text():
    tokens = torch.tensor([[5, 6, 7, 2, 1, 1], [5, 6, 7, 8, 9, 10]])
    assert metrics.answer_lengths(tokens, (1, 2)).tolist() == [3, 6]
    assert metrics.answer_lengths(tokens, (1, 2), max_tokens=4).tolist() == [3, 4]
    costs = [metrics.RequestCost(kind="bench", task="x", doc_id=0, nfe=1, steps=1, answer_tokens=3, seconds=1.0),
             metrics.RequestCost(kind="bench", task="x", doc_id=1, nfe=9, steps=9, answer_tokens=6, seconds=2.0)]
    totals = metrics.CostTotals.of(costs)
    assert totals.tpf == pytest.approx(9 / 10)  # not the mean of 3.0 and 0.67
    assert totals.tokens_per_second == pytest.approx(3.0)
    assert metrics.speedup(6.0, 2.0) == 3.0
    summary = metrics.summarize(costs)
    assert summary["bench"]["all"]["requests"] == 2 and summary["bench"]["tasks"]["x"]["nfe"] == 10


def test_answer_tokens_are_cut_at_the_first_stop_sequence(tiny):
    tok = tiny.tokenizer
    ids = tok("5 + 1 = 6 . so 6 + 2 = 8 . #### 8", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids + [tiny.fill_id] * 3])
    before_so = len(tok("5 + 1 = 6 .", add_special_tokens=False)["input_ids"])
    assert metrics.answer_lengths(tokens, tiny.eot_ids, tokenizer=tok, stops=["so"]).tolist() == [before_so]
    assert metrics.answer_lengths(tokens, tiny.eot_ids, tokenizer=tok, stops=["Question:"]).tolist() == [len(ids)]
    assert metrics.cut_at_stops("a b . so c", ["so", "b"]) == "a "


# ------------------------------------------------------------------------------------------
# Monte Carlo likelihood
# ------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(0, 50), st.integers(0, 2 ** 31))
def test_draw_masks_masks_l_uniform_target_positions(lengths, draw, seed):
    L = torch.tensor(lengths)
    masked, count = likelihood.draw_masks(L, torch.full_like(L, draw), 12, seed)
    assert ((count >= 1) & (count <= L)).all()
    assert torch.equal(masked.sum(1), count)
    assert not (masked & (torch.arange(12)[None, :] >= L[:, None])).any()


def test_draw_counts_are_uniform_and_depend_only_on_seed_draw_and_length():
    L = torch.full((4000,), 4)
    _, count = likelihood.draw_masks(L, torch.arange(4000), 4, seed=0)
    frequency = torch.bincount(count, minlength=5)[1:].double() / 4000
    assert torch.allclose(frequency, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)
    again, _ = likelihood.draw_masks(torch.tensor([4, 7]), torch.tensor([5, 5]), 7, seed=0)
    assert torch.equal(again[0, :4], likelihood.draw_masks(torch.tensor([4]), torch.tensor([5]), 4, seed=0)[0][0])


def test_mc_estimate_is_exact_where_the_hand_computation_is_closed_form():
    V = 12
    # Uniform logits: every masked token costs log V, so every draw scores L log V exactly.
    uniform = FakeModel(logits_fn=lambda ids: torch.zeros(*ids.shape, V, dtype=torch.float64), vocab_size=V)
    ll, forwards = likelihood.masked_loglikelihood(uniform, [[3, 4], [5]], [[6, 7, 8], [9, 10, 11, 3, 4]],
                                                   mc_num=5, seed=1, rows_per_forward=3)
    assert torch.allclose(ll, torch.tensor([-3 * math.log(V), -5 * math.log(V)], dtype=torch.float64))
    assert forwards == 4  # 10 rows, 3 per forward
    # A one-token target is always masked (l = 1 = L): the estimate is its log-probability.
    table = torch.log_softmax(torch.randn(V, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 0)
    fixed = FakeModel(logits_fn=lambda ids: table.expand(*ids.shape, V), vocab_size=V)
    ll, _ = likelihood.masked_loglikelihood(fixed, [[3, 4, 5]], [[7]], mc_num=3, seed=9)
    assert ll.item() == pytest.approx(table[7].item(), rel=1e-12)


def test_mc_estimate_matches_a_draw_by_draw_hand_computation(tiny):
    tok = tiny.tokenizer
    contexts = [tok("Tom has 3 apples .")["input_ids"], tok("Ann has 5 eggs . She sells 2 .")["input_ids"]]
    targets = [tok("3 + 4 = 7")["input_ids"], tok("5 - 2 = 3 . #### 3")["input_ids"]]
    batched, _ = likelihood.masked_loglikelihood(tiny, contexts, targets, mc_num=6, seed=3, rows_per_forward=5)
    by_hand = []
    for context, target in zip(contexts, targets):
        L, total = len(target), 0.0
        for d in range(6):
            masked, count = likelihood.draw_masks(torch.tensor([L]), torch.tensor([d]), L, seed=3)
            ids = torch.tensor([context + target])
            noisy = ids.clone()
            noisy[0, len(context):][masked[0]] = tiny.mask_id
            logp = torch.log_softmax(tiny.logits(noisy)[0, len(context):].double(), -1)
            ce = -logp[torch.arange(L), torch.tensor(target)]
            total += ce[masked[0]].sum().item() * L / count.item()
        by_hand.append(-total / 6)
    assert batched.tolist() == pytest.approx(by_hand, rel=1e-10)
    swapped, _ = likelihood.masked_loglikelihood(tiny, contexts[::-1], targets[::-1], mc_num=6, seed=3,
                                                 rows_per_forward=4)
    assert swapped.flip(0).tolist() == pytest.approx(batched.tolist(), rel=1e-10)  # batch-independent


def test_likelihood_errors_name_the_request(tiny):
    with pytest.raises(ConfigError, match="request 1 has an empty continuation"):
        likelihood.masked_loglikelihood(tiny, [[5], [6]], [[7], []])
    with pytest.raises(ConfigError, match="mask token"):
        likelihood.masked_loglikelihood(tiny, [[tiny.mask_id]], [[7]])


# ------------------------------------------------------------------------------------------
# The lm-eval model
# ------------------------------------------------------------------------------------------
def test_loglikelihood_is_deterministic_under_a_seed_and_reports_greedy(tiny):
    lm = DllmLM(pretrained=tiny, mc_num=8, mc_batch_size=5, seed=4)
    context = "Tom has 3 apples ."
    greedy = decode(tiny, [tiny.tokenizer(context)["input_ids"]], gen_length=3, block_length=3, steps=3).tokens[0]
    greedy_text = " " + tiny.tokenizer.decode(greedy.tolist())
    requests = [_request("loglikelihood", (context, greedy_text), doc_id=0),
                _request("loglikelihood", (context, " 3 + 4 = 7"), doc_id=1)]
    first = lm.loglikelihood(requests)
    second = DllmLM(pretrained=tiny, mc_num=8, mc_batch_size=3, seed=4).loglikelihood(requests[::-1])[::-1]
    assert first == second
    assert [g for _, g in first] == [True, False]
    ids = lm._encode_pair(context, " 3 + 4 = 7")
    direct, _ = likelihood.masked_loglikelihood(tiny, [ids[0]], [ids[1]], mc_num=8, seed=4)
    assert first[1][0] == pytest.approx(direct.item(), rel=1e-12)
    other = DllmLM(pretrained=tiny, mc_num=8, seed=5).loglikelihood(requests[1:])
    assert other[0][0] != first[1][0]
    assert lm.costs[-1].kind == "loglikelihood" and lm.costs[-1].nfe == 8 + 5  # 8 draws + 5 greedy steps ("3 + 4 = 7")
    rolling = lm.loglikelihood_rolling([_request("loglikelihood_rolling", ("Tom has 3 apples .",))])
    assert isinstance(rolling[0], float) and rolling[0] < 0


def test_generate_until_cuts_at_until_and_max_gen_toks_and_counts_costs(tiny):
    lm = DllmLM(pretrained=tiny, gen_length=16, block_length=8, batch_size=2)
    question = task.test_problems()[0].question
    plain = decode(tiny, [question], gen_length=16, block_length=8)
    words = plain.text[0].split()
    stop = words[2]
    request = _request("generate_until", (question, {"until": [stop]}), doc_id=0)
    capped = _request("generate_until", (question, {"until": [], "max_gen_toks": 4}), doc_id=1)
    texts = lm.generate_until([request, capped, request])  # the last: a padding copy (repeats=1)
    assert texts[0] == plain.text[0][:plain.text[0].find(stop)] and stop not in texts[0]
    assert texts[1] == tiny.tokenizer.decode(plain.tokens[0, :4].tolist(), skip_special_tokens=True)
    assert texts[2] == texts[0]
    costs = {c.doc_id: c for c in lm.costs}
    assert len(lm.costs) == 2  # the padding copy is not counted
    assert costs[1].answer_tokens == 4 and costs[0].answer_tokens < 16
    assert costs[0].nfe == 16 and costs[0].gen_length == 16 and costs[0].seconds > 0
    info = lm.get_model_info()["dllm"]
    assert info["costs"]["generate_until"]["all"]["requests"] == 2 and info["gen_length"] == 16


def test_gen_length_follows_max_gen_toks_when_unset(tiny):
    lm = DllmLM(pretrained=tiny, block_length=8)
    lm.generate_until([_request("generate_until", ("Tom has 3 apples .", {"until": [], "max_gen_toks": 10}))])
    assert lm.costs[-1].gen_length == 16  # 10 rounded up to the block length
    assert lm.costs[-1].answer_tokens <= 10


def test_chat_template_is_the_models(tiny):
    lm = DllmLM(pretrained=tiny)
    history = [{"role": "user", "content": "Tom has 3 apples ."}]
    assert lm.apply_chat_template(history) == prompt_text("Tom has 3 apples .", tiny.tokenizer)
    assert lm.chat_template(True) == tiny.tokenizer.chat_template
    assert lm.tokenizer_name


def test_model_args_errors_are_clear(tiny):
    with pytest.raises(ConfigError, match="unknown argument.*temprature"):
        DllmLM(pretrained=tiny, temprature=0.5)
    with pytest.raises(ConfigError, match="batch_size='auto'"):
        DllmLM(pretrained=tiny, batch_size="auto")
    with pytest.raises(ConfigError, match="mc_num must be an integer"):
        DllmLM(pretrained=tiny, mc_num=0)
    with pytest.raises(SpecError, match="unknown plugin"):
        DllmLM(pretrained=tiny, strategy="thresold")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            DllmLM(pretrained="default", device="cuda:0")


def test_lm_eval_finds_the_dllm_model_beside_its_own():
    from lm_eval.api.registry import get_model

    assert get_model("dllm") is DllmLM
    assert get_model("hf").__name__ == "HFLM"


# ------------------------------------------------------------------------------------------
# Local tasks
# ------------------------------------------------------------------------------------------
def test_rendered_tasks_use_absolute_paths_and_the_tasks_own_extractor(rendered):
    config = yaml.safe_load(rendered.files["dllm_arith"].read_text())
    data = config["dataset_kwargs"]["data_files"]["test"]
    assert data.startswith("/") and local_tasks.Path(data).is_file()
    strict = re.compile(config["filter_list"][0]["filter"][0]["regex_pattern"])
    texts = [p.solution for p in task.test_problems()] + ["#### -3 then #### 4", "no number", "####12", "it is 5"]
    for text in texts:
        found = strict.findall(text)
        assert (int(found[0]) if found else None) == extract_answer(text)


def test_the_long_answer_task_is_rendered_from_the_same_template_on_its_own_split(rendered):
    base = yaml.safe_load(rendered.files["dllm_arith"].read_text())
    long = yaml.safe_load(rendered.files["dllm_arith_long"].read_text())
    assert base["task"] == "dllm_arith" and long["task"] == "dllm_arith_long"
    data = long["dataset_kwargs"]["data_files"]["test"]
    assert local_tasks.Path(data) == task.ARITH_LONG.test_file.resolve()
    assert {k: v for k, v in long.items() if k not in ("task", "dataset_kwargs")} == \
        {k: v for k, v in base.items() if k not in ("task", "dataset_kwargs")}
    tm = rendered.task_manager()
    assert "dllm_arith_long" in tm.all_tasks


def test_multiple_choice_task_has_the_gold_solution_at_its_label(rendered):
    config = yaml.safe_load(rendered.files["dllm_arith_mc"].read_text())
    rows = [json.loads(line) for line in open(config["dataset_kwargs"]["data_files"]["test"])]
    problems = task.test_problems()
    assert len(rows) == len(problems)
    for row, problem in zip(rows[:50], problems):
        assert row["choices"][row["label"]] == problem.solution
        assert len(set(row["choices"])) == 4
        wrong = [extract_answer(c) for i, c in enumerate(row["choices"]) if i != row["label"]]
        assert problem.answer not in wrong and all(w >= 0 for w in wrong)
    assert local_tasks.mc_rows(problems[:5]) == local_tasks.mc_rows(problems[:5])


def test_simple_evaluate_scores_equal_decoding_the_same_prompts_directly(rendered, tiny):
    """On a 20-problem slice: lm-eval's answers and exact match equal ``decode`` + ``extract_answer``,
    and its multiple-choice accuracy equals the argmax of the estimator's log-likelihoods.  Uses the
    shipped ``default`` model when it exists, else the tiny random model (float64)."""
    from lm_eval import simple_evaluate

    from dllm_arith.plugin import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        from dllm_strategies import load_model

        model = load_model("default", device="cpu")
    else:
        model = tiny
    spec, n = "threshold(tau=0.9)", 20
    lm = DllmLM(pretrained=model, strategy=spec, gen_length=32, block_length=32, batch_size=8, mc_num=4,
                greedy_check=False)
    out = simple_evaluate(model=lm, tasks=["dllm_arith", "dllm_arith_mc"], limit=n, apply_chat_template=True,
                          task_manager=rendered.task_manager(), log_samples=True, bootstrap_iters=0)
    problems = task.test_problems()[:n]
    # Decoded directly in the batches the adapter forms (longest prompt first, 8 at a time), so that
    # float32 models see the same padding.
    prompts = [prompt_text(p.question, model.tokenizer) for p in problems]
    order = sorted(range(n), key=lambda i: -len(model.tokenizer(prompts[i], add_special_tokens=False)["input_ids"]))
    texts = [""] * n
    for start in range(0, n, 8):
        batch = order[start:start + 8]
        result = decode(model, [problems[i].question for i in batch], strategy=spec, gen_length=32, block_length=32,
                        chat=True)
        for i, text in zip(batch, result.text):
            texts[i] = text
    samples = {s["doc_id"]: s for s in out["samples"]["dllm_arith"] if s["filter"] == "strict-match"}
    for i in range(n):
        assert samples[i]["arguments"][0][0] == prompts[i]
        assert samples[i]["resps"][0][0] == texts[i]
    accuracy = sum(extract_answer(t) == p.answer for t, p in zip(texts, problems)) / n
    assert out["results"]["dllm_arith"]["exact_match,strict-match"] == pytest.approx(accuracy)

    rows = [json.loads(line) for line in open(yaml.safe_load(rendered.files["dllm_arith_mc"].read_text())
                                              ["dataset_kwargs"]["data_files"]["test"])][:n]
    tok = model.tokenizer
    contexts, targets = [], []
    for row in rows:
        for choice in row["choices"]:
            contexts.append(tok(prompt_text(row["question"], tok), add_special_tokens=False)["input_ids"])
            targets.append(tok(choice, add_special_tokens=False)["input_ids"])
    ll, _ = likelihood.masked_loglikelihood(model, contexts, targets, mc_num=4, seed=0)
    picked = ll.view(n, 4).argmax(1).tolist()
    mc_accuracy = sum(p == row["label"] for p, row in zip(picked, rows)) / n
    assert out["results"]["dllm_arith_mc"]["acc,none"] == pytest.approx(mc_accuracy)
    if model is not tiny:  # the trained model ranks the gold solution first far above chance (1 in 4)
        assert mc_accuracy >= 0.5, f"multiple-choice accuracy {mc_accuracy:.2f} is near chance (0.25)"
    costs = out["config"]["dllm"]["costs"]
    assert costs["generate_until"]["all"]["requests"] == n and costs["loglikelihood"]["all"]["requests"] == 4 * n


def test_lm_eval_exact_match_scores_an_oracle_that_answers_half_right(rendered, tiny):
    """A fake model that writes the gold solution of even problems and a wrong final step on odd ones:
    lm-eval's strict and flexible exact match are both exactly 50%, as extract_answer says."""
    from lm_eval import simple_evaluate

    tok, G, n = tiny.tokenizer, 64, 12
    problems = task.test_problems()[:n]
    answers = {}
    for i, p in enumerate(problems):
        text = p.solution if i % 2 == 0 else local_tasks.wrong_solution(p, p.answer + 1)
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tiny.eot_ids[-1]]
        prompt = tuple(tok(prompt_text(p.question, tok), add_special_tokens=False)["input_ids"])
        answers[prompt] = ids + [tiny.fill_id] * (G - len(ids))
    V = len(tok)

    def oracle(ids):
        out = torch.full((*ids.shape, V), -10.0, dtype=torch.float64)
        for b, row in enumerate(ids[:, :-G].tolist()):
            start = next(k for k, t in enumerate(row) if t != tiny.fill_id)
            target = torch.tensor(answers[tuple(row[start:])])
            out[b, ids.shape[1] - G + torch.arange(G), target] = 10.0
        return out

    fake = FakeModel(logits_fn=oracle, vocab_size=V, mask_id=tiny.mask_id, eot_ids=tiny.eot_ids, fill_id=tiny.fill_id,
                     tokenizer=tok)
    lm = DllmLM(pretrained=fake, strategy="threshold(tau=0.9)", gen_length=G, block_length=32, batch_size=5)
    out = simple_evaluate(model=lm, tasks=["dllm_arith"], limit=n, apply_chat_template=True,
                          task_manager=rendered.task_manager(), bootstrap_iters=0)
    scores = out["results"]["dllm_arith"]
    assert scores["exact_match,strict-match"] == 0.5 and scores["exact_match,flexible-extract"] == 0.5
    costs = out["config"]["dllm"]["costs"]["generate_until"]["all"]
    assert costs["mean_nfe"] == 2  # one confident step per block
    expected = sum(len(tok(p.solution, add_special_tokens=False)["input_ids"]) for p in problems[::2])
    expected += sum(len(tok(local_tasks.wrong_solution(p, p.answer + 1), add_special_tokens=False)["input_ids"])
                    for p in problems[1::2])
    assert costs["answer_tokens"] == expected and costs["tpf"] == pytest.approx(expected / (2 * n))


# ------------------------------------------------------------------------------------------
# The eval launcher
# ------------------------------------------------------------------------------------------
def _eval_args(argv):
    from dllm_strategies.cli import build_parser

    return build_parser().parse_args(["eval", *argv])


def test_eval_launcher_builds_lm_evals_command_line():
    from dllm_harness.eval import lm_eval_argv

    args = _eval_args(["--strategy", "threshold(tau=0.9)+topk(k=2)!", "--tasks", "dllm_arith,gsm8k", "--limit", "5",
                       "--model_args", "mc_num=3", "--gen-length", "64", "--log_samples", "--seed", "1"])
    argv = lm_eval_argv(args, {"dllm_arith": "/rendered/dllm_arith.yaml"})
    assert argv[:3] == ["run", "--model", "dllm"]
    ours = json.loads(argv[argv.index("--model_args") + 1])
    assert ours == {"pretrained": "default", "strategy": "threshold(tau=0.9)+topk(k=2)!", "gen_length": 64}
    tasks = argv.index("--tasks")
    assert argv[tasks + 1:tasks + 3] == ["/rendered/dllm_arith.yaml", "gsm8k"]
    assert "--apply_chat_template" in argv and argv[argv.index("--device") + 1] in ("cpu", "cuda")
    # the user's lm-eval options come last, as typed: their --model_args merges over ours
    assert argv[-7:] == ["--limit", "5", "--model_args", "mc_num=3", "--log_samples", "--seed", "1"]
    assert "--apply_chat_template" not in lm_eval_argv(_eval_args(["--tasks", "x", "--no-chat-template"]), {})


def test_eval_rejects_a_bad_spec_before_lm_eval_runs(capsys):
    from dllm_strategies.cli import main

    assert main(["eval", "--strategy", "treshold", "--tasks", "dllm_arith"]) == 2
    assert "unknown plugin 'treshold'" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_command_prints_lm_evals_table_offline(checkpoint, capsys, monkeypatch):
    from dllm_strategies.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["eval", "--model", str(checkpoint), "--strategy", "threshold", "--tasks", "dllm_arith", "--limit",
                 "5", "--gen-length", "32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"\|dllm_arith\s*\|", out) and "strict-match" in out and "exact_match" in out


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------
def test_matrix_expansion_adds_one_baseline_per_model_and_gen_length():
    entries = [matrix.Entry(spec="threshold(tau=0.9)"), matrix.Entry(spec="", tokens_per_step=2),
               matrix.Entry(spec="entropy_threshold", gen_length=32)]
    out = matrix.expand(entries, [16, 64], block_length=16)
    baselines = [(e.gen_length, e.resolved_steps) for e in out if e.baseline]
    assert sorted(baselines) == [(16, 16), (32, 32), (64, 64)]
    assert {(e.display, e.gen_length) for e in out} >= {("threshold(tau=0.9)", 16), ("low_confidence 2/step", 64)}
    assert all(e.block_length <= e.gen_length for e in out)


def test_one_baseline_model_serves_every_model_of_the_run():
    from dllm_harness.bench import EntryResult, ProblemRecord, with_speedups

    entries = [matrix.Entry(spec="threshold(tau=0.9)", model="teacher"),
               matrix.Entry(spec="entropy_threshold", model="student")]
    out = matrix.expand(entries, [16, 64], block_length=16, baseline_model="teacher")
    assert [(e.model, e.gen_length) for e in out if e.baseline] == [("teacher", 16), ("teacher", 64)]
    assert out[0].baseline and out[0].model == "teacher"  # the baseline model comes first

    def result(entry, seconds):
        record = ProblemRecord(index=0, answer=1, predicted=1, correct=True, nfe=4, steps=4, answer_tokens=8,
                               seconds=seconds, text="")
        return EntryResult(entry=entry, records=[record], trajectory=None)

    timed = with_speedups([result(e, 8.0 if e.baseline else 2.0) for e in out])
    assert {(r.entry.model, r.entry.gen_length): r.speedup for r in timed if not r.entry.baseline} == {
        ("teacher", 16): 4.0, ("teacher", 64): 4.0, ("student", 16): 4.0, ("student", 64): 4.0}


def test_sweeps_set_the_knob_and_name_the_method():
    entries = matrix.parse_sweep("threshold(tau=0.9)+eot@threshold.tau=0.7,0.95")
    assert [e.spec for e in entries] == ["threshold(tau=0.7)+eot", "threshold(tau=0.95)+eot"]
    assert {e.method_name for e in entries} == {"threshold+eot"} and entries[0].display == "threshold+eot tau=0.7"
    steps = matrix.parse_sweep("@tokens_per_step=1,4")
    assert [attrs_gen(e, 64).resolved_steps for e in steps] == [64, 16]
    with pytest.raises(ConfigError, match="SPEC@KNOB"):
        matrix.parse_sweep("threshold")
    with pytest.raises(ConfigError, match="not in the spec"):
        matrix.parse_sweep("threshold@margin.tau=0.5")
    with pytest.raises(ConfigError, match="tokens_per_step"):
        attrs_gen(matrix.Entry(tokens_per_step=3), 64).resolved_steps
    with pytest.raises(ConfigError, match="unknown keys"):
        matrix.entry_from_mapping({"spec": "threshold", "tau": 0.5})


def attrs_gen(entry, G):
    import attrs

    return attrs.evolve(entry, gen_length=G)


def test_bench_writes_the_table_json_and_pictures(checkpoint, tmp_path, capsys):
    from matplotlib.image import imread

    from dllm_harness.bench import main

    out = tmp_path / "bench"
    code = main(["--model", str(checkpoint), "--strategy", "threshold(tau=0.9)", "--gen-lengths", "16",
                 "--block-length", "8", "--limit", "3", "--batch-size", "2", "--sweep", "@tokens_per_step=2,4",
                 "--out", str(out), "--quiet", "--example", "1"])
    assert code == 0
    table = (out / "results.md").read_text()
    assert "| **low_confidence" in table and "threshold(tau=0.9)" in table
    assert "low_confidence tokens_per_step=4" in table
    assert "AUP" in table  # low_confidence has three points (baseline, 2 and 4 per step)
    data = json.loads((out / "results.json").read_text())
    entries = {e["label"]: e for e in data["entries"]}
    base = next(e for e in data["entries"] if e["baseline"])
    assert base["mean_nfe"] == 16 and base["steps"] == 16 and base["speedup"] == 1.0
    four = entries["low_confidence tokens_per_step=4"]
    assert four["mean_nfe"] == 4 and four["tpf"] == pytest.approx(four["answer_tokens"] / 12)
    assert len(four["records"]) == 3 and four["trajectory"]["index"] == 1
    assert all(r["answer_forwards"] + r["tail_forwards"] == r["nfe"] for r in four["records"])
    assert four["mean_answer_forwards"] + four["mean_tail_forwards"] == pytest.approx(four["mean_nfe"])
    assert "| answer NFE | tail NFE | TPF | answer TPF |" in table
    assert max(four["trajectory"]["commit_step"]) == 3
    assert data["aup"][0]["method"] == "low_confidence" and data["aup"][0]["points"] == 3
    for name in ("pareto.png", "tpf_accuracy.png", "trajectory.png"):
        image = imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 600
    assert "| model | gen |" in capsys.readouterr().out


def test_bench_resume_reuses_finished_entries_and_refuses_other_settings(checkpoint, tmp_path, capsys, monkeypatch):
    import dllm_strategies
    from dllm_harness.bench import main

    out = tmp_path / "bench"
    common = ["--model", str(checkpoint), "--gen-lengths", "16", "--block-length", "8", "--limit", "2",
              "--batch-size", "2", "--out", str(out), "--quiet"]
    assert main([*common, "--strategy", "threshold(tau=0.9)"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert len((out / "journal.jsonl").read_text().splitlines()) == 3  # settings + baseline + threshold

    def no_loading(*args, **kwargs):
        raise AssertionError("a resumed run with every entry journaled must not load the model")

    monkeypatch.setattr(dllm_strategies, "load_model", no_loading)
    capsys.readouterr()
    assert main([*common, "--strategy", "threshold(tau=0.9)", "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [e["records"] for e in again["entries"]] == [e["records"] for e in first["entries"]]
    assert "2 finished entries" in capsys.readouterr().err
    monkeypatch.undo()

    # a new entry on resume: only it is decoded; the report names both processes
    assert main([*common, "--strategy", "threshold(tau=0.9)", "--strategy", "entropy_threshold", "--resume"]) == 0
    lines = (out / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(x)["process"] for x in lines[1:]}) == 2
    assert "Resumed run" in (out / "results.md").read_text()

    # other settings are refused with what differs
    other = [x if x != "2" else "1" for x in common]  # --limit 1 --batch-size 1
    assert main([*other, "--strategy", "threshold(tau=0.9)", "--resume"]) == 2
    assert "batch_size, problems differ" in capsys.readouterr().err
    assert main([*common, "--strategy", "threshold(tau=0.9)", "--problems", "validation", "--resume"]) == 2
    assert "problem_set differ" in capsys.readouterr().err
    # without --resume the run starts again
    assert main([*common, "--strategy", "threshold(tau=0.9)"]) == 0
    assert len((out / "journal.jsonl").read_text().splitlines()) == 3


def test_bench_on_the_validation_split_names_it_and_never_touches_the_test_set():
    from dllm_harness.bench import _problems

    problems, where = _problems("validation", 20)
    assert len(problems) == 20 and where.startswith("first 20 of the validation split")
    assert not {p.question for p in problems} & {p.question for p in task.test_problems()}
    test, where = _problems("test", 0)
    assert test == task.test_problems() and where == "first 500 of the test split of task 'arith' (test.jsonl)"
    long, where = _problems("test", 3, "arith-long")
    assert long == task.ARITH_LONG.test_problems()[:3]
    assert where == "first 3 of the test split of task 'arith-long' (test-long.jsonl)"


def test_bench_refuses_bad_entries_before_loading_anything(tmp_path, capsys):
    from dllm_harness.bench import main

    assert main(["--strategy", "thresold", "--out", str(tmp_path)]) == 2
    assert "unknown plugin 'thresold'" in capsys.readouterr().err
    assert main(["--sweep", "threshold@threshold.tau=", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "harness" / "matrices").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_matrices_resolve_against_the_installed_plugins_and_models(path):
    from dllm_strategies.discovery import installed_models

    entries = matrix.read_matrix(path, model="default")
    assert entries, f"{path.name} holds no entries"
    kept, _ = matrix.installed(entries, optional=False)  # raises on a spec that does not resolve
    assert len(kept) == len(entries)
    unknown = {e.model for e in entries} - set(installed_models())
    assert not unknown, f"{path.name} names models nobody registers: {sorted(unknown)}"


def test_bench_hands_its_baseline_to_the_oracle_as_self_reference(tiny, monkeypatch):
    from dllm_learn2pd import reference
    from dllm_harness.bench import run_bench

    def no_second_decode(*args, **kwargs):
        raise AssertionError("the oracle decoded a self-reference the baseline had already made")

    reference.REFERENCES.clear()
    entries = matrix.expand([matrix.Entry(spec="egp_oracle", model="tiny")], [16], block_length=8)
    assert [e.baseline for e in entries] == [True, False]
    monkeypatch.setattr(reference, "self_reference", no_second_decode)
    try:
        results = run_bench(entries, task.test_problems()[:3], batch_size=2, loader=lambda name: tiny, progress=False)
    finally:
        reference.REFERENCES.clear()
    base, oracle = results
    assert [r.text for r in oracle.records] == [r.text for r in base.records]  # the oracle reproduces its reference
    assert oracle.totals.mean_nfe < base.totals.mean_nfe == 16


def test_a_fixed_option_is_a_variant_of_its_own_and_a_sweep_point_joins_its_methods_curve():
    assert matrix.Entry(spec="eot").method_name == "eot"
    assert matrix.Entry(spec="eot(cut=committed)").method_name == "eot(cut=committed)"
    assert matrix.Entry(spec="", tokens_per_step=4).method_name == "low_confidence"
    swept = matrix.parse_sweep('prophet(marker="####")@prophet.early=5,10')
    assert {e.method_name for e in swept} == {"prophet"} and swept[0].display == "prophet early=5"


def test_best_combination_is_the_fastest_within_a_point_of_its_baseline_and_the_top_aup():
    from dllm_harness.bench import EntryResult, ProblemRecord, best_combinations, with_speedups
    from dllm_harness.report import markdown

    def result(entry, right, seconds):  # 10 problems, `right` of them correct, 8 answer tokens each
        records = [ProblemRecord(index=i, answer=1, predicted=1 if i < right else 0, correct=i < right, nfe=4,
                                 steps=4, answer_tokens=8, seconds=seconds / 10, text="") for i in range(10)]
        return EntryResult(entry=entry, records=records, trajectory=None)

    entries = matrix.expand([matrix.Entry(spec="threshold(tau=0.9)"), matrix.Entry(spec="entropy_threshold"),
                             matrix.Entry(spec="", tokens_per_step=4)], [16], block_length=16)
    timing = {"low_confidence (baseline)": (10, 8.0), "threshold(tau=0.9)": (10, 2.0),
              "entropy_threshold": (9, 1.0), "low_confidence 4/step": (8, 0.5)}
    results = with_speedups([result(e, *timing[e.display]) for e in entries])
    aups = [{"model": "default", "gen_length": 16, "method": "low_confidence", "points": 2, "aup": 5.0, "y_max": 100.0}]
    (best,) = best_combinations(results, aups, tolerance=10.0)
    assert best["fastest"]["label"] == "entropy_threshold" and best["fastest"]["speedup"] == 8.0  # 90% >= 100 - 10
    assert best["best_aup"]["method"] == "low_confidence"
    (strict,) = best_combinations(results, aups, tolerance=1.0)
    assert strict["fastest"]["label"] == "threshold(tau=0.9)"
    meta = {"problem_set": "x", "seed": 0, "batch_size": 1, "torch_threads": 1}
    assert "**Best at gen 16**: fastest within 1 point of its baseline's accuracy: threshold(tau=0.9) on default " \
           "(100.0% vs 100.0%, 40.0 tokens/s, 4.00x); highest AUP: low_confidence on default (5.00)." \
           in markdown(results, aups, meta, [strict])
