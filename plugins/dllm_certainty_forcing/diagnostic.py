"""The certainty diagnostic: how much a model still has to learn from certainty forcing.

For a model and a set of teacher trajectories (prompt, the teacher's response, padded with
end-of-text to the generation length it was decoded at), it measures at masked positions of
one block the two terms of dParallel's loss (cross-entropy against the teacher's token and
the certainty entropy at temperature 0.5 over positions whose argmax is already right), the
share of positions whose argmax is right, the mean entropy (temperature 1), and the share an
entropy-threshold decoder would commit (entropy below ``tau``).  Every figure is pooled over
positions, separately for **answer** blocks (holding a token of the answer: a response token
before the first end-of-text / end-of-turn) and **tail** blocks (end-of-text only), and for
these states:

* **ratio r** (0.5, 0.9, 1.0 by default): the training masking, for every block ``n`` of
  every trajectory: blocks before ``n`` clean, each position of ``n`` masked with
  probability ``r`` (all of them at 1.0), everything after ``n`` masked;
* **visited**: the states a decode actually visits.  The model decodes the same prompts
  with a strategy (``entropy_threshold(tau=0.5)``), and every one of its forwards is
  replayed: the tokens it had committed before that step, masks elsewhere, measured at the
  masked positions of the block the step worked on, against the teacher's tokens.  These
  are the states a loss has to change for a threshold decoder to commit more per step.
  Where the decode took another valid surface form than the teacher (the synthetic task
  has several), its context no longer matches the teacher's tokens, so the same forwards
  are also replayed with the teacher's tokens in the committed positions
  (**visited, teacher context**): the decoder's mask patterns with training's targets.

The ratio-0.5 row is what the authors train on; if the model is already certain there, the
loss has nothing to teach (docs/distillation.md gives the figures of the shipped pair).
(Chen et al., "dParallel", arXiv 2509.26488.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from dllm_certainty_forcing.loss import TEMPERATURE
from dllm_certainty_forcing.trajectories import is_correct
from dllm_strategies import build_strategy, ops
from dllm_strategies.decode import decode
from dllm_strategies.errors import ConfigError

KINDS = ("answer", "tail")
VISITED = "visited"
TEACHER_CONTEXT = "visited, teacher context"


def _ratios(instance: Any, attribute: attrs.Attribute, value: tuple[float, ...]) -> None:
    if any(not 0.0 < r <= 1.0 for r in value):
        raise ConfigError(f"diagnostic: mask ratios {list(value)} must lie in (0, 1]")


@attrs.frozen
class DiagnosticConfig:
    """What the diagnostic measures.

    Attributes:
        ratios: mask ratios of the block under test (the training masking).
        blocks: how many blocks per trajectory the ratio states measure, from the start of the
            response (0: all); the tail blocks past the first few cost forwards and repeat
            one another.
        visited: the strategy whose visited states are replayed (None: none).
        block_length: the block width (32, as decoding and training).
        batch_size: sequences per forward.
        seed: seed of the masking draws (and of the decode).
        temperature: of the certainty entropy (0.5, as the loss).
        tau: entropy below which a position counts as committable (0.5, the entropy threshold).
    """

    ratios: tuple[float, ...] = attrs.field(default=(0.5, 0.9, 1.0), converter=tuple, validator=_ratios)
    visited: str | None = "entropy_threshold(tau=0.5)"
    blocks: int = 0
    block_length: int = 32
    batch_size: int = 64
    seed: int = 0
    temperature: float = TEMPERATURE
    tau: float = 0.5

    def __attrs_post_init__(self) -> None:
        if self.blocks < 0:
            raise ConfigError(f"diagnostic: blocks={self.blocks} must be >= 0 (0: every block)")
        if self.block_length < 1 or self.batch_size < 1:
            raise ConfigError(f"diagnostic: block_length={self.block_length} and batch_size={self.batch_size} "
                              "must be positive")
        if self.temperature <= 0:
            raise ConfigError(f"diagnostic: temperature={self.temperature} must be > 0 (the loss uses 0.5)")


class _Tally:
    """Sums over positions, per (state, kind)."""

    FIELDS = ("positions", "ce", "certainty", "right", "entropy", "certain")

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], dict[str, float]] = {}

    def add(self, state: str, kind: str, logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, tau: float) -> None:
        """``logits`` (N, V) at N masked positions, ``targets`` (N,) the teacher's tokens."""
        row = self.sums.setdefault((state, kind), dict.fromkeys(self.FIELDS, 0.0))
        if logits.shape[0] == 0:
            return
        logits = logits.float()
        right = logits.argmax(-1) == targets
        entropy = ops.entropy(logits)
        row["positions"] += logits.shape[0]
        row["ce"] += float(F.cross_entropy(logits, targets, reduction="sum"))
        row["certainty"] += float((ops.entropy(logits / temperature) * right).sum())
        row["right"] += float(right.sum())
        row["entropy"] += float(entropy.sum())
        row["certain"] += float((entropy < tau).sum())

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (state, kind), row in self.sums.items():
            n = row["positions"]
            right = row["right"]
            out.append({"state": state, "kind": kind, "positions": int(n),
                        "ce": row["ce"] / n if n else 0.0,
                        "certainty": row["certainty"] / right if right else 0.0,
                        "accuracy": right / n if n else 0.0,
                        "entropy": row["entropy"] / n if n else 0.0,
                        "certain": row["certain"] / n if n else 0.0})
        return out


def _padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    return ids, mask


def _logits(model: Any, prompt: torch.Tensor, prompt_mask: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """The model's logits over the response columns of ``prompt + response`` (left-padded prompts)."""
    mask = torch.cat([prompt_mask, torch.ones_like(response, dtype=torch.bool)], 1).long()
    ids = torch.cat([prompt, response], 1).to(model.device)
    mask = mask.to(model.device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    return model.logits(ids, attention_mask=mask, position_ids=position, logits_to_keep=response.shape[1])


def _canvas(responses: Sequence[Sequence[int]], gen_length: int, fill_id: int) -> torch.Tensor:
    for r in responses:
        if len(r) > gen_length:
            raise ConfigError(f"diagnostic: a trajectory has {len(r)} response tokens, more than gen_length="
                              f"{gen_length}; use the length the trajectories were decoded at")
    return torch.tensor([list(r) + [fill_id] * (gen_length - len(r)) for r in responses], dtype=torch.long)


@torch.inference_mode()
def diagnose(model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
             gen_length: int, config: DiagnosticConfig = DiagnosticConfig(),
             answers: Sequence[int] | None = None, progress: bool = False) -> dict[str, Any]:
    """Measure ``model`` on trajectories (prompt ids, the teacher's response ids).

    Returns ``{"rows": [...], "visited": {...} | None, "trajectories": N, ...}``: one row per
    (state, kind) with ``positions``, ``ce``, ``certainty`` (the loss's entropy term, over the
    right positions), ``accuracy`` (argmax right), ``entropy`` (mean, temperature 1) and
    ``certain`` (share with entropy below ``tau``).  ``visited`` adds, for the replayed decode,
    its forwards per trajectory in answer and tail blocks, the share of trajectories it
    reproduced token for token and, with ``answers`` and the synthetic task's answer format,
    its accuracy.
    """
    from tqdm.auto import tqdm

    if not prompts or len(prompts) != len(responses):
        raise ConfigError("diagnostic: give at least one trajectory, as many prompts as responses")
    block = config.block_length
    if gen_length % block:
        raise ConfigError(f"diagnostic: block_length={block} must divide gen_length={gen_length}")
    pad_id = model.tokenizer.pad_token_id if getattr(model.tokenizer, "pad_token_id", None) is not None \
        else model.fill_id
    end_ids = sorted({model.fill_id, *model.eot_ids})
    targets_all = _canvas(responses, gen_length, model.fill_id)
    num_blocks = gen_length // block
    measured = min(config.blocks, num_blocks) if config.blocks else num_blocks
    tally = _Tally()
    generator = torch.Generator().manual_seed(config.seed)
    columns = torch.arange(gen_length)[None, :]
    chunks = range(0, len(prompts), config.batch_size)
    bar = tqdm(total=len(prompts) * (len(config.ratios) * measured + (1 if config.visited else 0)),
               disable=not progress, desc="diagnose", dynamic_ncols=True)
    for start in chunks:
        prompt, prompt_mask = _padded(prompts[start:start + config.batch_size], pad_id)
        targets = targets_all[start:start + config.batch_size]
        kinds = ops.answer_blocks(ops.first_index_of(targets, end_ids), num_blocks, block)
        for ratio in config.ratios:
            for n in range(measured):
                in_block = (columns >= n * block) & (columns < (n + 1) * block)
                coin = torch.rand(targets.shape, generator=generator) < ratio
                masked = in_block & coin
                hidden = masked | (columns >= (n + 1) * block)
                logits = _logits(model, prompt, prompt_mask, targets.masked_fill(hidden, model.mask_id)).cpu()
                for kind, rows in (("answer", kinds[:, n]), ("tail", ~kinds[:, n])):
                    where = masked & rows[:, None]
                    tally.add(f"ratio {ratio:g}", kind, logits[where], targets[where], config.temperature, config.tau)
                bar.update(targets.shape[0])
    visited = None
    if config.visited:
        visited = _visited(model, prompts, targets_all, tally, config, pad_id, end_ids, answers, bar)
    bar.close()
    order = {f"ratio {r:g}": i for i, r in enumerate(config.ratios)} | {VISITED: len(config.ratios),
                                                                       TEACHER_CONTEXT: len(config.ratios) + 1}
    rows = sorted(tally.rows(), key=lambda r: (order[r["state"]], KINDS.index(r["kind"])))
    return {"trajectories": len(prompts), "gen_length": gen_length, "config": attrs.asdict(config),
            "rows": rows, "visited": visited}


@attrs.frozen
class VisitedStates:
    """The inputs of every forward of a decode, rebuilt from its result: one state per (row,
    step), all ``(S, ...)``.

    Attributes:
        row: the decoded row of each state.
        step: the step it precedes.
        context: (S, G) the response as that forward saw it: tokens committed before the step,
            the mask token elsewhere.
        hidden: (S, G) the masked positions (committed at this step or later).
        block: the block the step worked on (where it committed).
        in_block: (S, G) the positions of that block.
    """

    row: torch.Tensor = attrs.field(eq=False)
    step: torch.Tensor = attrs.field(eq=False)
    context: torch.Tensor = attrs.field(eq=False)
    hidden: torch.Tensor = attrs.field(eq=False)
    block: torch.Tensor = attrs.field(eq=False)
    in_block: torch.Tensor = attrs.field(eq=False)


def visited_states(tokens: torch.Tensor, commit_step: torch.Tensor, steps: torch.Tensor, block_length: int,
                   mask_id: int) -> VisitedStates:
    """Every forward's input of a decode without cuts, from its final ``tokens`` (B, G), the step
    each position was committed at (``commit_step``) and each row's ``steps``: before step
    ``s`` a position holds its token if it was committed at an earlier step, else the mask
    (a strategy that commits only, never revokes, visits exactly these states)."""
    row = torch.repeat_interleave(torch.arange(len(steps)), steps)
    step = torch.cat([torch.arange(int(s)) for s in steps]) if len(steps) else torch.zeros(0, dtype=torch.long)
    committed = commit_step[row]
    hidden = committed >= step[:, None]
    cols = torch.arange(tokens.shape[1])[None, :]
    now = committed == step[:, None]
    block = torch.where(now, cols, tokens.shape[1]).min(1).values // block_length
    return VisitedStates(row=row, step=step, context=tokens[row].masked_fill(hidden, mask_id), hidden=hidden,
                         block=block, in_block=(cols // block_length) == block[:, None])


def _visited(model: Any, prompts: Sequence[Sequence[int]], targets_all: torch.Tensor, tally: _Tally,
             config: DiagnosticConfig, pad_id: int, end_ids: list[int], answers: Sequence[int] | None,
             bar) -> dict[str, Any]:
    """Decode with ``config.visited`` and replay every forward of it (see the module docstring)."""
    block = config.block_length
    gen_length = targets_all.shape[1]
    num_blocks = gen_length // block
    strategy = build_strategy(config.visited)
    if getattr(strategy.owner("dllm_remask"), "revocable", False):
        raise ConfigError(f"diagnostic: '{config.visited}' revokes committed tokens, so its visited states cannot be "
                          "rebuilt from when each token was committed; replay a strategy that only commits")
    forwards = {kind: 0 for kind in KINDS}
    same, correct = 0, 0
    for start in range(0, len(prompts), config.batch_size):
        prompt, prompt_mask = _padded(prompts[start:start + config.batch_size], pad_id)
        targets = targets_all[start:start + config.batch_size]
        result = decode(model, prompt, prompt_mask=prompt_mask, strategy=strategy, gen_length=gen_length,
                        block_length=block, seed=config.seed)
        tokens, commit = result.tokens.cpu(), result.commit_step.cpu()
        if bool((commit < 0).any()):
            raise ConfigError(f"diagnostic: the decode '{config.visited}' cut rows short (a truncation plugin); "
                              "replay a decode without one, e.g. entropy_threshold(tau=0.5)")
        same += int((tokens == targets).all(1).sum())
        if answers is not None:
            chunk = answers[start:start + config.batch_size]
            correct += sum(is_correct(t, a) for t, a in zip(result.text, chunk, strict=True))
        kinds = ops.answer_blocks(ops.first_index_of(targets, end_ids), num_blocks, block)
        states = visited_states(tokens, commit, result.steps.cpu(), block, model.mask_id)
        for first in range(0, len(states.row), config.batch_size):
            part = slice(first, first + config.batch_size)
            r, hidden, in_block = states.row[part], states.hidden[part], states.in_block[part]
            answer_block = kinds[r, states.block[part]]
            for state, context in ((VISITED, states.context[part]),
                                   (TEACHER_CONTEXT, targets[r].masked_fill(hidden, model.mask_id))):
                logits = _logits(model, prompt[r], prompt_mask[r], context).cpu()
                for kind, rows in (("answer", answer_block), ("tail", ~answer_block)):
                    where = hidden & in_block & rows[:, None]
                    tally.add(state, kind, logits[where], targets[r][where], config.temperature, config.tau)
            for kind, rows in (("answer", answer_block), ("tail", ~answer_block)):
                forwards[kind] += int(rows.sum())
        bar.update(targets.shape[0])
    n = len(prompts)
    out = {"strategy": config.visited, "answer_forwards": forwards["answer"] / n,
           "tail_forwards": forwards["tail"] / n, "reproduced": same / n}
    if answers is not None:
        out["accuracy"] = correct / n
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (and a line on the replayed decode)."""
    lines = ["| state | block | positions | CE | certainty H (T=0.5) | argmax right | entropy | entropy < tau |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['state']} | {r['kind']} | {r['positions']} | {r['ce']:.3f} | {r['certainty']:.3f} | "
                     f"{100 * r['accuracy']:.1f}% | {r['entropy']:.3f} | {100 * r['certain']:.1f}% |")
    v = report.get("visited")
    if v:
        extra = f", accuracy {100 * v['accuracy']:.1f}%" if "accuracy" in v else ""
        lines.append(f"\nvisited = every forward of `{v['strategy']}`: {v['answer_forwards']:.2f} answer-block and "
                     f"{v['tail_forwards']:.2f} tail-block forwards per trajectory; {100 * v['reproduced']:.1f}% of "
                     f"the teacher's responses reproduced token for token{extra}")
    return "\n".join(lines)
