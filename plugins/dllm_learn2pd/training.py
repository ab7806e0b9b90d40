"""Train a Learn2PD filter: collect the EGP oracle's labels, fit the MLP, save it.

Data (arXiv 2509.25188, as PAPERS.md states it): the base model decodes training prompts with
the EGP oracle against its own standard decode; at every oracle step, for each of the current
block's positions, the feature is the top-1 softmax confidence (committed or not) and the label
is ``argmax == reference``.  Training: binary cross-entropy, AdamW (lr 3e-3), the full data set
as one batch, many epochs.  Here the prompts are the synthetic task's (chat template, the shipped
test questions excluded), generation 64 and block 32 by default.  The oracle stalls as the
authors' does (``egp_oracle(stall=argmax)``; ``oracle_stall`` chooses).  Features are read exactly
as ``learned_filter`` reads them while decoding (:func:`~dllm_learn2pd.features.block_confidences`
with the same zero padding); the oracle runs without End-of-Text truncation and its logits cover
the whole response, so no training feature is ever padded, as in the authors' data.  Several generation lengths may
be collected into one data set (``gen_lengths``, a prompt count each): a filter meant for long
generations then also sees the blocks a short one never has, e.g. whole blocks of end-of-text.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import torch

from dllm_arith import task
from dllm_strategies.decode import Run, encode_prompts
from dllm_strategies.errors import ConfigError
from dllm_strategies.strategy import build_strategy
from dllm_strategies.state import DecodeConfig, DecodeState

from dllm_learn2pd.features import ZERO, block_columns, block_confidences
from dllm_learn2pd.filter_model import DEFAULT_THRESHOLD, FilterMLP, save_filter
from dllm_learn2pd.reference import self_reference

STALLS = ("argmax", "no_match")


def oracle_spec(stall: str = "argmax") -> str:
    """The oracle that labels the steps: EGP against the reference :func:`collect` hands it."""
    if stall not in STALLS:
        raise ConfigError(f"filter training: oracle stall rule must be one of {', '.join(STALLS)}, got {stall!r}")
    return f"egp_oracle(reference=given,stall={stall})"


def _at_least(low: float):
    def check(instance, attribute, value) -> None:
        if value < low:
            raise ConfigError(f"filter training: {attribute.name} must be at least {low}, got {value}")

    return check


def _each(check):
    def each(instance, attribute, values) -> None:
        for value in values:
            check(instance, attribute, value)

    return each


def _stall(instance, attribute, value) -> None:
    oracle_spec(value)


def _unit(instance, attribute, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"filter training: {attribute.name} must lie in [0, 1], got {value}")


@attrs.frozen
class FilterTraining:
    """How a filter is trained.

    Attributes:
        gen_lengths: generation lengths the labels are collected at (each a multiple of
            ``block_length``, the filter's width).
        prompts: training prompts per generation length (synthetic task, test questions
            excluded); length ``i`` decodes the first ``prompts[i]`` questions of one pool.
        val_prompts: further prompts per generation length, unseen in training, for the held-out
            metrics (0: none); drawn the same way from a second pool.
        block_length: the block length, i.e. the filter's width.
        batch_size: prompts decoded together while collecting.
        epochs: full-batch optimisation steps.
        lr / weight_decay: AdamW's.
        hidden: hidden width of the MLP (None: the block length, as in the paper).
        threshold: accept threshold stored with the filter (and used for the reported metrics).
        seed: seed of the prompts and of the MLP's initialisation.
        oracle_stall: the oracle's stall rule (``egp_oracle(stall=...)``): ``"argmax"`` (the
            authors') or ``"no_match"`` (the rule the shipped filter was trained with).
        chat: wrap prompts in the tokenizer's chat template.
        difficulty: the synthetic task's knobs.
    """

    gen_lengths: tuple[int, ...] = attrs.field(default=(64,), converter=tuple, validator=_each(_at_least(1)))
    prompts: tuple[int, ...] = attrs.field(default=(1024,), converter=tuple, validator=_each(_at_least(1)))
    val_prompts: tuple[int, ...] = attrs.field(default=(128,), converter=tuple, validator=_each(_at_least(0)))
    block_length: int = attrs.field(default=32, validator=_at_least(1))
    batch_size: int = attrs.field(default=64, validator=_at_least(1))
    epochs: int = attrs.field(default=20_000, validator=_at_least(1))
    lr: float = attrs.field(default=3e-3, validator=_at_least(1e-12))
    weight_decay: float = attrs.field(default=0.01, validator=_at_least(0.0))
    hidden: int | None = attrs.field(default=None, validator=attrs.validators.optional(_at_least(1)))
    threshold: float = attrs.field(default=DEFAULT_THRESHOLD, validator=_unit)
    seed: int = 0
    oracle_stall: Literal["argmax", "no_match"] = attrs.field(default="argmax", validator=_stall)
    chat: bool = True
    difficulty: task.Difficulty = task.Difficulty()

    def __attrs_post_init__(self) -> None:
        n = len(self.gen_lengths)
        for name in ("prompts", "val_prompts"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"filter training: {name} gives {len(getattr(self, name))} counts for "
                                  f"{n} generation lengths {self.gen_lengths}; give one count per length")
        if n == 0 or len(set(self.gen_lengths)) != n:
            raise ConfigError(f"filter training: gen_lengths must be distinct and at least one, got {self.gen_lengths}")
        for g in self.gen_lengths:
            if g % self.block_length:
                raise ConfigError(f"gen_length={g} is not a multiple of block_length={self.block_length}")


@attrs.frozen
class OracleSteps:
    """Features and labels of every oracle step, one row per (prompt, step).

    Attributes:
        features: (N, width) float32 top-1 confidences of the step's block.
        labels: (N, width) float32, 1 where the step's argmax equals the reference.
        masked: (N, width) bool, positions still masked at that step (the ones a filter decides).
        prompts: how many prompts the rows came from.
    """

    features: torch.Tensor = attrs.field(eq=False)
    labels: torch.Tensor = attrs.field(eq=False)
    masked: torch.Tensor = attrs.field(eq=False)
    prompts: int = 0

    def __len__(self) -> int:
        return self.features.shape[0]


def split_prompts(config: FilterTraining) -> tuple[list[str], list[str]]:
    """The training and validation pools of the synthetic task (as many questions as the largest
    count asks for): distinct, none from the test split."""
    exclude = task.held_out_questions()
    train = [p.question for p in task.generate(max(config.prompts), config.seed, config.difficulty, exclude)]
    val = [p.question for p in task.generate(max(config.val_prompts), config.seed + 1, config.difficulty,
                                             exclude | frozenset(train))]
    return train, val


@torch.no_grad()
def collect(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], *, gen_length: int = 64,
            block_length: int = 32, batch_size: int = 64, chat: bool = True, seed: int = 0,
            stall: str = "argmax", progress: bool = False) -> OracleSteps:
    """Decode ``prompts`` with the EGP oracle (stall rule ``stall``) against the model's own
    1-token-per-step decode and record every step (see :class:`OracleSteps`)."""
    from tqdm.auto import tqdm

    width, G = block_length, gen_length
    oracle = oracle_spec(stall)
    features, labels, masked = [], [], []
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    for batch in tqdm(batches, desc="oracle labels", disable=not progress, file=sys.stderr):
        ids, mask = encode_prompts(model, batch, chat=chat)
        ids, mask = ids.to(model.device), mask.to(model.device)
        config = DecodeConfig.for_model(model, gen_length=G, block_length=block_length, steps=G, seed=seed)
        reference = self_reference(model, ids, mask, config)
        run = Run.begin(build_strategy(oracle), model, DecodeState.start(ids, mask, config, reference=reference))
        while not run.done:
            record = run.step()
            before, start = record.before, record.plan.window_start
            cols = block_columns(start, width).clamp(max=G - 1)
            features.append(block_confidences(record.proposal.logits, start, width, before.live_length, G,
                                              pad=ZERO).cpu())
            hit = record.proposal.tokens == before.reference
            labels.append(hit.gather(1, cols).float().cpu())
            masked.append(before.masked.gather(1, cols).cpu())
    if not features:
        raise ConfigError("no prompts to collect oracle labels from")
    return OracleSteps(features=torch.cat(features), labels=torch.cat(labels), masked=torch.cat(masked),
                       prompts=len(prompts))


def concat(parts: Sequence[OracleSteps]) -> OracleSteps:
    """One data set of the rows of ``parts`` (same width), e.g. collected at several lengths."""
    return OracleSteps(features=torch.cat([p.features for p in parts]), labels=torch.cat([p.labels for p in parts]),
                       masked=torch.cat([p.masked for p in parts]), prompts=sum(p.prompts for p in parts))


def metrics(network: FilterMLP, data: OracleSteps, threshold: float) -> dict[str, float | None]:
    """Loss and the accept rule's quality on still-masked positions: precision (accepted and
    labelled right; None when nothing is accepted), recall, and the share of masked positions
    accepted."""
    with torch.no_grad():
        logits = network(data.features)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, data.labels)
        accept = (torch.sigmoid(logits) > threshold) & data.masked
    right = data.labels.bool() & data.masked
    accepted, positives = int(accept.sum()), int(right.sum())
    true_accepts = int((accept & right).sum())
    return {
        "loss": float(loss),
        "precision": true_accepts / accepted if accepted else None,
        "recall": true_accepts / positives if positives else None,
        "accepted": accepted / max(int(data.masked.sum()), 1),
        "positive_rate": float(data.labels.mean()),
    }


def _with_steps(network: FilterMLP, data: OracleSteps, threshold: float) -> dict[str, Any]:
    return {"steps": len(data), **metrics(network, data, threshold)}


def _by_length(network: FilterMLP, parts: dict[int, OracleSteps], threshold: float) -> dict[str, dict[str, Any]]:
    """:func:`metrics` (with the step count) of each generation length's rows, keyed by the length."""
    return {str(g): _with_steps(network, part, threshold) for g, part in parts.items()}


def fit(data: OracleSteps, *, epochs: int = 20_000, lr: float = 3e-3, weight_decay: float = 0.01,
        hidden: int | None = None, seed: int = 0, progress: bool = False) -> tuple[FilterMLP, list[float]]:
    """Train a :class:`FilterMLP` on ``data`` with BCE, AdamW, full batch; returns it and the loss
    of every epoch (before its update)."""
    from tqdm.auto import tqdm

    width = data.features.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = FilterMLP(width, hidden or width)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    bar = tqdm(range(epochs), desc="filter", disable=not progress, file=sys.stderr, mininterval=0.5)
    network.train()
    for epoch in bar:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(data.features), data.labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if epoch % 200 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    network.eval().requires_grad_(False)
    return network, losses


def train_filter(model: Any, output: str | Path, config: FilterTraining = FilterTraining(), *,
                 model_name: str = "", command: str = "", progress: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Collect labels with ``model``, train a filter and save it to ``output`` (``.safetensors``
    plus its ``.json``).  Returns the training facts written into the JSON."""
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"--output must name a .safetensors file (its .json goes beside it), got {str(output)!r}")
    train_pool, val_pool = split_prompts(config)
    shared = {"block_length": config.block_length, "batch_size": config.batch_size, "chat": config.chat,
              "seed": config.seed, "stall": config.oracle_stall}
    parts = {}
    for g, n in zip(config.gen_lengths, config.prompts):
        part = parts[g] = collect(model, train_pool[:n], gen_length=g, progress=progress, **shared)
        log(f"gen {g}: collected {len(part)} oracle steps from {part.prompts} prompts "
            f"({100 * float(part.labels.mean()):.1f}% of block positions match the reference)")
    train = concat(list(parts.values()))
    network, losses = fit(train, epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                          hidden=config.hidden, seed=config.seed, progress=progress)
    facts: dict[str, Any] = {
        "paper": "arXiv 2509.25188 (Learn2PD)", "model": model_name, "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": "dllm_arith synthetic problems, test split excluded",
        "difficulty": attrs.asdict(config.difficulty),
        **{k: v for k, v in attrs.asdict(config, recurse=False).items() if k != "difficulty"},
        "oracle": oracle_spec(config.oracle_stall), "feature_padding": "zero",
        "steps_collected": len(train), "first_loss": losses[0], "final_loss": losses[-1],
        "train": metrics(network, train, config.threshold),
    }
    several = len(config.gen_lengths) > 1
    if several:
        facts["train_by_gen_length"] = _by_length(network, parts, config.threshold)
    val_parts = {g: collect(model, val_pool[:n], gen_length=g, progress=progress, **shared)
                 for g, n in zip(config.gen_lengths, config.val_prompts) if n}
    if val_parts:
        facts["validation"] = _with_steps(network, concat(list(val_parts.values())), config.threshold)
        if several:
            facts["validation_by_gen_length"] = _by_length(network, val_parts, config.threshold)
    save_filter(network, output, threshold=config.threshold, training=facts)
    log(f"saved {output} (+ {output.with_suffix('.json').name}): loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return facts
