"""The answer / tail split of the forwards (docs/metrics.md): hand-made decode results pin the
definition and its edge cases; real decodes of the shipped model check that it adds up and that
the bench and the lm-eval adapter report it."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_strategies import DecodeResult
from dllm_arith import task
from dllm_strategies.errors import ConfigError
from dllm_harness import bench, matrix, metrics, report

EOT, FILL = 2, 1
STOP_IDS = (EOT, FILL)


def _result(answers: list[int], block_nfe: list[list[int]], gen_length: int) -> DecodeResult:
    """A decode result whose rows hold ``answers[i]`` answer tokens (ids >= 5), then end-of-text."""
    cols = torch.arange(gen_length)[None, :]
    tokens = torch.where(cols < torch.tensor(answers)[:, None], 7, EOT)
    per_block = torch.tensor(block_nfe)
    return DecodeResult(tokens=tokens, steps=per_block.sum(1), nfe=per_block.sum(1), block_nfe=per_block,
                        commit_step=torch.zeros_like(tokens), forced=torch.zeros(len(answers), dtype=torch.long),
                        trace=None)


def _split(result: DecodeResult) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    answers = metrics.answer_lengths(result.tokens, STOP_IDS)
    return (answers, *metrics.split_forwards(result.block_nfe, answers, result.tokens.shape[1]))


def test_cost_split_reproduces_the_documented_example():
    result = _result([21, 40, 0], [[12, 2, 2, 2, 2, 2, 2, 2], [10, 9, 2, 2, 2, 2, 2, 2], [3, 1, 1, 1, 1, 1, 1, 1]], 256)
    answers, answer_fw, tail_fw = _split(result)
    assert answers.tolist() == [21, 40, 0]
    assert answer_fw.tolist() == [12, 19, 0] and tail_fw.tolist() == [14, 12, 10]
    costs = [metrics.RequestCost(kind="bench", task="t", doc_id=i, nfe=int(result.nfe[i]), steps=int(result.steps[i]),
                                 answer_tokens=int(answers[i]), seconds=1.0, answer_forwards=int(answer_fw[i]),
                                 tail_forwards=int(tail_fw[i])) for i in range(3)]
    totals = metrics.CostTotals.of(costs)
    assert (totals.nfe, totals.answer_forwards, totals.tail_forwards) == (67, 31, 36)
    assert totals.tpf == pytest.approx(61 / 67) and round(totals.tpf, 2) == 0.91
    assert totals.answer_tpf == pytest.approx(61 / 31) and round(totals.answer_tpf, 2) == 1.97
    assert round(totals.mean_nfe, 1) == 22.3
    assert (round(totals.mean_answer_forwards, 1), totals.mean_tail_forwards) == (10.3, 12.0)
    summary = metrics.summarize(costs)["bench"]["all"]
    assert summary["answer_forwards"] == 31 and summary["tail_forwards"] == 36
    assert summary["answer_tpf"] == totals.answer_tpf


def test_block_edges_decide_answer_blocks():
    # blocks of 8: an answer ending on a block's last column keeps the next block in the tail; one
    # more token makes it an answer block, even though the rest of that block is end-of-text
    nfe = [[5, 3, 2, 1]] * 5
    result = _result([8, 9, 0, 32, 1], nfe, 32)
    _, answer_fw, tail_fw = _split(result)
    assert answer_fw.tolist() == [5, 8, 0, 11, 5]  # 8 tokens: block 0; 9: blocks 0-1; empty; all; 1 token
    assert tail_fw.tolist() == [6, 3, 11, 0, 6]
    # one block: every forward of a non-empty answer is an answer forward
    one = _result([3, 0], [[9], [4]], 16)
    assert _split(one)[1].tolist() == [9, 0] and _split(one)[2].tolist() == [0, 4]


def test_a_stop_sequence_or_max_tokens_moves_blocks_to_the_tail():
    result = _result([30], [[4, 4, 4, 4]], 32)
    capped = metrics.answer_lengths(result.tokens, STOP_IDS, max_tokens=8)
    assert metrics.split_forwards(result.block_nfe, capped, 32)[0].tolist() == [4]  # only block 0 holds answer


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.data())
def test_answer_and_tail_forwards_sum_to_the_block_forwards_and_grow_with_the_answer(num_blocks, block_length, data):
    G = num_blocks * block_length
    per_block = data.draw(st.lists(st.integers(0, 9), min_size=num_blocks, max_size=num_blocks))
    a, b = sorted(data.draw(st.lists(st.integers(0, G), min_size=2, max_size=2)))
    block_nfe = torch.tensor([per_block, per_block])
    answer_fw, tail_fw = metrics.split_forwards(block_nfe, torch.tensor([a, b]), G)
    assert (answer_fw + tail_fw).tolist() == [sum(per_block)] * 2
    assert answer_fw[0] <= answer_fw[1]  # a longer answer never has fewer answer forwards
    assert answer_fw[0] == sum(per_block[:-(-a // block_length)])


def test_split_rejects_mismatched_shapes():
    with pytest.raises(ConfigError, match="not 3 blocks"):
        metrics.split_forwards(torch.ones(2, 3, dtype=torch.long), torch.tensor([1, 2]), 32)
    with pytest.raises(ConfigError, match=r"answer_tokens \(B,\)"):
        metrics.split_forwards(torch.ones(2, 4, dtype=torch.long), torch.tensor([1]), 32)


def test_a_set_without_the_split_reports_none_not_a_partial_sum():
    """Likelihood requests and bench records journaled before the split have none: the totals say
    so (null in JSON, '-' in the table) instead of summing part of the set."""
    costs = [metrics.RequestCost(kind="bench", task="t", doc_id=0, nfe=4, steps=4, answer_tokens=3, seconds=1.0,
                                 answer_forwards=4, tail_forwards=0),
             metrics.RequestCost(kind="bench", task="t", doc_id=1, nfe=4, steps=4, answer_tokens=3, seconds=1.0)]
    totals = metrics.CostTotals.of(costs)
    assert totals.answer_forwards is None and totals.answer_tpf is None and totals.mean_tail_forwards is None
    old = {"index": 0, "answer": 1, "predicted": 1, "correct": True, "nfe": 4, "steps": 4, "answer_tokens": 3,
           "seconds": 0.5, "text": "#### 1"}  # a record as journals wrote it before the split
    (entry,) = matrix.expand([matrix.Entry(spec="")], [16], block_length=16)
    result = bench._from_journal(entry, {"records": [old], "trajectory": None})
    assert result.summary()["answer_tpf"] is None
    meta = {"problem_set": "x", "seed": 0, "batch_size": 1, "torch_threads": 1}
    row = report.markdown([result], [], meta).splitlines()[4]
    assert row.split(" | ")[6:10] == ["4.0", "-", "-", "0.75"]  # mean NFE, answer NFE, tail NFE, TPF


def _totals(*requests: tuple[int, int, int]) -> metrics.CostTotals:
    """Totals of requests given as (NFE, answer forwards, tail forwards)."""
    return metrics.CostTotals.of(
        metrics.RequestCost(kind="bench", task="t", doc_id=i, nfe=n, steps=n, answer_tokens=3, seconds=1.0,
                            answer_forwards=a, tail_forwards=t) for i, (n, a, t) in enumerate(requests))


def test_tail_share_is_the_part_of_the_saving_spent_on_the_tail():
    # the baseline of the docs' example: 32 answer and 224 tail forwards a request
    baseline = _totals((256, 32, 224), (256, 32, 224))
    threshold = _totals((18, 11, 7), (18, 11, 7))  # 238 saved, 217 of them in the tail
    assert metrics.tail_share(baseline, threshold) == pytest.approx(217 / 238)
    answer_only = _totals((240, 16, 224), (240, 16, 224))  # a rule that saves only inside the answer
    assert metrics.tail_share(baseline, answer_only) == 0.0
    assert metrics.tail_share(baseline, baseline) is None  # nothing saved
    no_split = metrics.CostTotals.of([metrics.RequestCost(kind="bench", task="t", doc_id=0, nfe=8, steps=8,
                                                          answer_tokens=3, seconds=1.0)])
    assert metrics.tail_share(baseline, no_split) is None


# ------------------------------------------------------------------------------------------
# Real decodes of the shipped model
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    """The shipped ``default`` model (5 MB, in the repository): trained, so its answers end in
    end-of-text and leave a tail, unlike a random tiny model's."""
    from dllm_strategies import load_model

    return load_model("default", device="cpu")


def test_bench_reports_the_split_and_it_adds_up_on_a_real_decode(shipped, tmp_path):
    """At gen 64 in blocks of 16 the shipped model's answers (about 21-40 tokens) leave end-of-text
    blocks: the baseline (one token per step, 16 forwards a block) pays for them in tail
    forwards; eot truncation cuts them away."""
    problems = task.test_problems()[:2]
    entries = matrix.expand([matrix.Entry(spec="threshold(tau=0.9)+eot")], [64], block_length=16)
    results = bench.run_bench(entries, problems, batch_size=2, loader=lambda name: shipped, progress=False)
    base, eot = results
    for r in results:
        for x in r.records:
            assert x.answer_forwards + x.tail_forwards == x.nfe
    for x in base.records:  # each answer block costs the baseline exactly block_length forwards
        assert x.answer_forwards == 16 * -(-x.answer_tokens // 16) and x.tail_forwards == 64 - x.answer_forwards
    assert base.totals.tail_forwards > 0 and eot.totals.tail_forwards < base.totals.tail_forwards
    meta = {"problem_set": "first 2", "seed": 0, "batch_size": 2, "torch_threads": 1}
    paths = report.write(tmp_path, results, [], meta)
    data = json.loads(paths["json"].read_text())
    for entry, r in zip(data["entries"], results, strict=True):
        assert entry["mean_answer_forwards"] + entry["mean_tail_forwards"] == pytest.approx(entry["mean_nfe"])
        assert entry["answer_tpf"] == pytest.approx(r.totals.answer_tokens / r.totals.answer_forwards)
        assert [x["answer_forwards"] for x in entry["records"]] == [x.answer_forwards for x in r.records]
    assert data["entries"][0]["tail_share"] is None  # the baseline saves nothing against itself
    assert data["entries"][1]["tail_share"] == pytest.approx(metrics.tail_share(base.totals, eot.totals))
    table = paths["markdown"].read_text()
    assert "| mean NFE | answer NFE | tail NFE | TPF | answer TPF |" in table
    assert table.rstrip().splitlines()[-1].endswith(f"| {100 * eot.tail_share:.0f}% |")
    cells = next(line for line in table.splitlines() if "**low_confidence" in line).split(" | ")
    assert cells[7:10] == [f"{base.totals.mean_answer_forwards:.1f}", f"{base.totals.mean_tail_forwards:.1f}",
                           f"{base.totals.tpf:.2f}"]


def test_eval_costs_report_the_split(shipped):
    lm_eval_model = pytest.importorskip("dllm_harness.lm_eval_model")
    from lm_eval.api.instance import Instance

    question = task.test_problems()[0].question
    lm = lm_eval_model.DllmLM(pretrained=shipped, strategy="", gen_length=64, block_length=16, batch_size=2)
    requests = [Instance(request_type="generate_until", doc={}, arguments=(question, gen), idx=0,
                         metadata=("t", doc, 1))
                for doc, gen in enumerate([{"until": []}, {"until": [], "max_gen_toks": 10}])]
    lm.generate_until(requests)
    whole, capped = sorted(lm.costs, key=lambda c: c.doc_id)
    for cost in (whole, capped):
        assert cost.answer_forwards + cost.tail_forwards == cost.nfe == 64
    assert whole.answer_forwards == 16 * -(-whole.answer_tokens // 16) and whole.answer_tokens > 16
    assert capped.answer_tokens == 10 and capped.answer_forwards == 16  # the cut answer fills block 0 only
    summary = lm.get_model_info()["dllm"]["costs"]["generate_until"]["all"]
    assert summary["answer_forwards"] + summary["tail_forwards"] == summary["nfe"] == 128
    assert summary["answer_tpf"] == pytest.approx(summary["answer_tokens"] / summary["answer_forwards"])
