"""The cost and quality metrics every table of the harness reports, defined once here and in
``docs/metrics.md``.

* **NFE** (number of function evaluations) of a request: the model forward passes its row took
  part in, counted by the core (``DecodeResult.nfe``), cache-refresh forwards included.  A batch
  forward counts once for every row in it.
* **Answer tokens** of a request: the response tokens before the first end-of-text / end-of-turn
  token, cut further at the first stop sequence (lm-eval's ``until``) and at ``max_tokens``.
  End-of-text tokens are never counted.
* **TPF** (tokens per forward) of a set: ``sum(answer tokens) / sum(NFE)`` over the set
  (d3LLM's definition), not a mean of per-request ratios.
* **Answer forwards** / **tail forwards** of a request: its NFE split by the block of
  ``block_length`` response columns that held its open window (``DecodeResult.block_nfe``): the
  forwards spent while that block held at least one answer token, and the rest, spent on blocks
  that hold none (all end-of-text, cut by end-of-text truncation, or past a stop sequence).  See
  :func:`split_forwards`.
* **Answer TPF** of a set: ``sum(answer tokens) / sum(answer forwards)``.
* **Encoder passes** of a request: the passes that wrote finished blocks into a
  block-diffusion model's exact cache (``DecodeResult.encoder_forwards``: DiffusionGemma's
  encoder, a block-causal model's block writes) during its batch's decode; never part of NFE,
  which counts the passes that score undecided positions.  0 for every other model.
* **Tokens per second** of a set: ``sum(answer tokens) / sum(decode wall seconds)``; the wall
  time of a batch is shared equally by its rows; model loading and tokenisation are outside it.
* **Speedup** of a method: ``baseline seconds / method seconds`` on the same problems, the same
  model and the same gen length, both measured in the same run.
* **AUP** (area under the (TPF, accuracy) curve, d3LLM): see :func:`aup`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import torch

from dllm_strategies import ops
from dllm_strategies.errors import ConfigError

AUP_DROP = 5.0  # points more than this many accuracy points below y_1 are dropped
AUP_SLOPE = 3.0  # W(y) = min(exp(-AUP_SLOPE * (1 - y / y_max)), 1)


# ------------------------------------------------------------------------------------------
# Answer tokens
# ------------------------------------------------------------------------------------------
def _contains_stop(text: str, stops: Sequence[str]) -> bool:
    return any(stop in text for stop in stops)


def answer_lengths(tokens: torch.Tensor, eot_ids: Iterable[int], *, tokenizer: Any = None,
                   stops: Sequence[str] = (), max_tokens: int | None = None) -> torch.Tensor:
    """(B,) answer tokens of each response row (see the module docstring).

    Args:
        tokens: (B, G) response ids.
        eot_ids: end-of-text / end-of-turn / fill ids; the answer ends before the first.
        tokenizer: needed only with ``stops``: decodes prefixes to find the stop sequence.
        stops: stop strings; the answer is the longest prefix whose text contains none.
        max_tokens: cap on the answer (lm-eval's ``max_gen_toks``), or None.
    """
    lengths = ops.first_index_of(tokens, eot_ids)
    if max_tokens is not None:
        lengths = lengths.clamp(max=max_tokens)
    stops = [s for s in stops if s]
    if not stops:
        return lengths
    if tokenizer is None:
        raise ConfigError("answer_lengths: stop sequences need a tokenizer to decode the responses")
    rows = tokens.tolist()
    ends = lengths.tolist()
    texts = tokenizer.batch_decode([row[:end] for row, end in zip(rows, ends, strict=True)], skip_special_tokens=True)
    out = list(ends)
    for i, text in enumerate(texts):
        if not _contains_stop(text, stops):
            continue
        row = rows[i][:ends[i]]
        # The shortest prefix whose text contains a stop: decoding is prefix-monotone, so bisect.
        first_with_stop = bisect.bisect_left(
            range(len(row) + 1), True,
            key=lambda k: _contains_stop(tokenizer.decode(row[:k], skip_special_tokens=True), stops))
        out[i] = max(first_with_stop - 1, 0)
    return torch.tensor(out, dtype=torch.long, device=tokens.device)


def split_forwards(block_nfe: torch.Tensor, answer_tokens: torch.Tensor,
                   gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) answer forwards and (B,) tail forwards of each row; they sum to its NFE.

    The answer is a prefix of the response, so a row's answer blocks are its first
    ``ceil(answer tokens / block_length)`` blocks: every block that holds at least one answer
    token, the one holding the last answer token and the first end-of-text included.  The other
    blocks are the tail.  An empty answer (end-of-text first) makes every forward a tail forward.

    Args:
        block_nfe: (B, num_blocks) forwards per block that held the row's open window
            (``DecodeResult.block_nfe``).
        answer_tokens: (B,) answer tokens per row (:func:`answer_lengths`).
        gen_length: response columns decoded (``DecodeResult.tokens.shape[1]``).
    """
    if block_nfe.dim() != 2 or answer_tokens.shape != block_nfe.shape[:1]:
        raise ConfigError(f"split_forwards: block_nfe must be (B, num_blocks) and answer_tokens (B,), got "
                          f"{tuple(block_nfe.shape)} and {tuple(answer_tokens.shape)}")
    num_blocks = block_nfe.shape[1]
    if num_blocks < 1 or gen_length % num_blocks:
        raise ConfigError(f"split_forwards: gen_length={gen_length} is not {num_blocks} blocks of equal length; "
                          "pass the response length the decode that gave block_nfe used")
    answer = ops.answer_blocks(answer_tokens.to(block_nfe.device), num_blocks, gen_length // num_blocks)
    return (block_nfe * answer).sum(1), (block_nfe * ~answer).sum(1)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lm-eval's ``until``)."""
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at >= 0:
                cut = min(cut, at)
    return text[:cut]


# ------------------------------------------------------------------------------------------
# Per-request costs and their totals
# ------------------------------------------------------------------------------------------
@attrs.frozen
class RequestCost:
    """What one request cost.

    Attributes:
        kind: ``generate_until``, ``loglikelihood``, ``loglikelihood_rolling`` or ``bench``.
        task: the task (lm-eval task name, or the bench entry label).
        doc_id: the document's index in the task.
        nfe: forward passes the request's rows took part in.
        steps: decode steps (0 for likelihood requests).
        answer_tokens: see :func:`answer_lengths` (0 for likelihood requests).
        seconds: the request's share of its batch's wall time.
        gen_length: response positions decoded (0 for likelihood requests).
        hit_length: the response filled every position without an end-of-text token, so the
            answer may have been cut by ``gen_length``.
        answer_forwards / tail_forwards: ``nfe`` split by :func:`split_forwards`; None where
            there is no split (likelihood requests, bench records journaled before it existed).
        encoder_forwards: encoder passes of the request's batch (block-diffusion models' cache
            writes; 0 for every other model), apart from ``nfe``.
    """

    kind: str
    task: str
    doc_id: int
    nfe: int
    steps: int
    answer_tokens: int
    seconds: float
    gen_length: int = 0
    hit_length: bool = False
    answer_forwards: int | None = None
    tail_forwards: int | None = None
    encoder_forwards: int = 0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class CostTotals:
    """Sums over a set of requests, and the metrics derived from them.

    Attributes:
        requests: how many requests.
        nfe / steps / answer_tokens / seconds: sums over the requests.
        hit_length: requests whose response reached ``gen_length`` without an end-of-text.
        answer_forwards / tail_forwards: sums over the requests; None unless every request
            has the split (a sum over part of the set would understate it).
        encoder_forwards: sum over the requests of their encoder passes.
    """

    requests: int = 0
    nfe: int = 0
    steps: int = 0
    answer_tokens: int = 0
    seconds: float = 0.0
    hit_length: int = 0
    answer_forwards: int | None = 0
    tail_forwards: int | None = 0
    encoder_forwards: int = 0

    @classmethod
    def of(cls, costs: Iterable[RequestCost]) -> CostTotals:
        costs = list(costs)
        split = all(c.answer_forwards is not None and c.tail_forwards is not None for c in costs)
        return cls(requests=len(costs), nfe=sum(c.nfe for c in costs), steps=sum(c.steps for c in costs),
                   answer_tokens=sum(c.answer_tokens for c in costs), seconds=sum(c.seconds for c in costs),
                   hit_length=sum(c.hit_length for c in costs),
                   answer_forwards=sum(c.answer_forwards for c in costs) if split else None,
                   tail_forwards=sum(c.tail_forwards for c in costs) if split else None,
                   encoder_forwards=sum(c.encoder_forwards for c in costs))

    @property
    def mean_nfe(self) -> float:
        return self.nfe / self.requests if self.requests else 0.0

    @property
    def mean_steps(self) -> float:
        return self.steps / self.requests if self.requests else 0.0

    @property
    def tpf(self) -> float:
        return tokens_per_forward(self.answer_tokens, self.nfe)

    @property
    def tokens_per_second(self) -> float:
        return tokens_per_second(self.answer_tokens, self.seconds)

    @property
    def mean_answer_forwards(self) -> float | None:
        return _mean(self.answer_forwards, self.requests)

    @property
    def mean_tail_forwards(self) -> float | None:
        return _mean(self.tail_forwards, self.requests)

    @property
    def mean_encoder_forwards(self) -> float:
        return _mean(self.encoder_forwards, self.requests)

    @property
    def answer_tpf(self) -> float | None:
        """Answer tokens per answer forward (None without the split)."""
        return None if self.answer_forwards is None else tokens_per_forward(self.answer_tokens, self.answer_forwards)

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals and derived metrics."""
        return {"requests": self.requests, "nfe": self.nfe, "mean_nfe": self.mean_nfe, "steps": self.steps,
                "mean_steps": self.mean_steps, "answer_tokens": self.answer_tokens, "tpf": self.tpf,
                "answer_forwards": self.answer_forwards, "tail_forwards": self.tail_forwards,
                "mean_answer_forwards": self.mean_answer_forwards, "mean_tail_forwards": self.mean_tail_forwards,
                "answer_tpf": self.answer_tpf, "encoder_forwards": self.encoder_forwards,
                "mean_encoder_forwards": self.mean_encoder_forwards, "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second, "hit_length": self.hit_length}


def _mean(total: int | None, requests: int) -> float | None:
    if total is None:
        return None
    return total / requests if requests else 0.0


def summarize(costs: Iterable[RequestCost]) -> dict[str, Any]:
    """Totals per request kind and per (kind, task): ``{kind: {"all": {...}, "tasks": {task: {...}}}}``."""
    by_kind: dict[str, dict[str, list[RequestCost]]] = {}
    for cost in costs:
        by_kind.setdefault(cost.kind, {}).setdefault(cost.task, []).append(cost)
    out = {}
    for kind, tasks in by_kind.items():
        everything = [c for group in tasks.values() for c in group]
        out[kind] = {"all": CostTotals.of(everything).summary(),
                     "tasks": {task: CostTotals.of(group).summary() for task, group in sorted(tasks.items())}}
    return out


# ------------------------------------------------------------------------------------------
# The metrics
# ------------------------------------------------------------------------------------------
def tokens_per_forward(answer_tokens: int, nfe: int) -> float:
    """TPF: answer tokens over forward passes, both summed over the set."""
    return answer_tokens / nfe if nfe else 0.0


def tokens_per_second(answer_tokens: int, seconds: float) -> float:
    """Answer tokens over decode wall seconds, both summed over the set."""
    return answer_tokens / seconds if seconds > 0 else 0.0


def speedup(baseline_seconds: float, seconds: float) -> float:
    """How many times faster than the baseline on the same problems (wall time ratio)."""
    if seconds <= 0 or baseline_seconds <= 0:
        raise ConfigError(f"speedup needs positive wall times, got baseline {baseline_seconds} and {seconds}")
    return baseline_seconds / seconds


def tail_share(baseline: CostTotals, method: CostTotals) -> float | None:
    """The part of the forwards ``method`` saves against ``baseline`` (the same problems) that are
    tail forwards (docs/metrics.md); None when it saves none or a set has no answer / tail split."""
    if baseline.mean_tail_forwards is None or method.mean_tail_forwards is None:
        return None
    saved = baseline.mean_nfe - method.mean_nfe
    if saved <= 0:
        return None
    return (baseline.mean_tail_forwards - method.mean_tail_forwards) / saved


def aup_weight(y: float, y_max: float) -> float:
    """W(y) = min(exp(-3 (1 - y / y_max)), 1); 1 when every method scored 0."""
    if y_max <= 0:
        return 1.0
    return min(math.exp(-AUP_SLOPE * (1.0 - y / y_max)), 1.0)


def aup(points: Iterable[tuple[float, float]], y_max: float, *, drop: float = AUP_DROP) -> float:
    """Area under the (TPF, accuracy) curve of one method on one task (d3LLM's AUP).

    Points ``(tpf, accuracy %)`` are sorted by TPF (ties: higher accuracy first); ``y_1`` is the
    accuracy of the lowest-TPF point; points more than ``drop`` below ``y_1`` are dropped; then::

        AUP = rho_1 * y_1 + sum_{i >= 2} (rho_i - rho_{i-1}) * (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2

    with ``W(y) = min(exp(-3 (1 - y / y_max)), 1)`` and ``y_max`` the best accuracy of any method
    on the task.

    Args:
        points: the method's (TPF, accuracy in %) points.
        y_max: the best accuracy (%) any method reached on the task (at least every ``y`` here).
    """
    ordered = sorted(((float(t), float(y)) for t, y in points), key=lambda p: (p[0], -p[1]))
    if not ordered:
        raise ConfigError("aup needs at least one (TPF, accuracy) point")
    for tpf, y in ordered:
        if tpf <= 0 or not 0 <= y <= 100:
            raise ConfigError(f"aup point (TPF {tpf}, accuracy {y}) is invalid: TPF must be > 0 and "
                              "accuracy a percentage in [0, 100]")
    best = max(y for _, y in ordered)
    if y_max < best:
        raise ConfigError(f"aup: y_max={y_max} is below this method's own best accuracy {best}; pass the best "
                          "accuracy of any method on the task")
    y1 = ordered[0][1]
    kept = [p for p in ordered if p[1] >= y1 - drop]
    total = kept[0][0] * kept[0][1]
    for (rho_prev, y_prev), (rho, y) in zip(kept, kept[1:]):
        total += (rho - rho_prev) * (y * aup_weight(y, y_max) + y_prev * aup_weight(y_prev, y_max)) / 2
    return total
