"""Certainty-forcing distillation: the training loop.

The student starts as a copy of the teacher (the same checkpoint, loaded again) and is
trained on the teacher's own trajectories (:mod:`.trajectories`) with dParallel's loss
(:mod:`.loss`) over two complementary views of one active block per sample
(:mod:`.masking`).  Layout (the authors' ``llada_train.py``): each sample is its clean prompt
followed by the response, the two together cut or padded with end-of-text to one
``total_length``, so a long prompt leaves less room for the response and the student sees
the end-of-text tail only as far as that length reaches; blocks are counted from the start of
the response.  ``pad_length`` instead gives every response the same region after a
left-padded prompt (the layout of earlier versions, kept as an option).  Training is either full fine-tuning or LoRA through ``peft`` on the Llama
projections (merged back into the weights at the end).

Every random draw of step ``s`` (which samples, which block, which positions) comes from
generators seeded by ``(seed, s)`` (samples: a per-epoch permutation seeded by
``(seed, epoch)``), so a run resumed from ``checkpoint.pt`` continues exactly as the
uninterrupted run would.  The checkpoint holds the trainable parameters (all of them, or the
LoRA adapters only), the optimiser, the step and the log.
(Chen et al., "dParallel", arXiv 2509.26488.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from dllm_certainty_forcing.loss import LLADA_WEIGHT, TEMPERATURE, LossTerms, certainty_forcing_loss
from dllm_certainty_forcing.masking import MaskRatio, Views, draw_views
from dllm_strategies.errors import ConfigError
from dllm_arith.sft import Batch, step_generator, collate

CHECKPOINT = "checkpoint.pt"
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"distill: {message}")


@attrs.frozen
class DistillConfig:
    """Settings of one distillation run (a resumed run must use the same ones).

    Attributes:
        steps: optimiser steps of the whole run.
        batch_size: samples per optimiser step (the paper's effective batch: 64).
        micro_batch_size: samples per forward (0: the whole batch); gradients accumulate.
        lr / warmup / weight_decay / grad_clip: AdamW, linear warm-up then constant (as the paper).
        seed: seed of every draw.
        total_length: prompt and response together cut or padded with end-of-text to this many
            tokens (the authors' layout: 384 for LLaDA on GSM8K).  0: use ``pad_length``.
        pad_length: instead, every response padded to this length after its left-padded
            prompt (earlier versions' layout; not the authors').  Exactly one of the two is set.
        block_length: block width of the masking scheme (32, as decoding).
        mask_distribution: how the first view's ratio of the active block is drawn per sample:
            ``fixed`` (``mask_ratio``, the authors), ``uniform`` or ``high`` (deviations; see
            :class:`~dllm_certainty_forcing.masking.MaskRatio`).
        mask_ratio: the fixed ratio (0.5).
        mask_skew: skew of ``high`` (Beta(skew, 1); 3: mean ratio 0.75).
        temperature: temperature of the certainty entropy (0.5).
        entropy_weight: ``w`` (2 for LLaDA-style models, 1 for Dream).
        lora_rank: 0 for full fine-tuning, else the LoRA rank (the paper: 128).
        lora_alpha: LoRA alpha (0: equal to the rank, as the paper).
        lora_dropout: LoRA dropout (the paper: 0).
        lora_targets: module names LoRA adapts (default: the Llama projections).
        gradient_checkpointing: recompute activations in the backward pass (large models).
        save_every / log_every / eval_every: periods in steps (eval 0: never).
    """

    steps: int
    batch_size: int = 64
    micro_batch_size: int = 0
    lr: float = 1e-4
    warmup: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    total_length: int = 0
    pad_length: int = 0
    block_length: int = 32
    mask_distribution: str = "fixed"
    mask_ratio: float = 0.5
    mask_skew: float = 3.0
    temperature: float = TEMPERATURE
    entropy_weight: float = LLADA_WEIGHT
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = attrs.field(default=LLAMA_PROJECTIONS, converter=tuple)
    gradient_checkpointing: bool = False
    save_every: int = 50
    log_every: int = 10
    eval_every: int = 0

    def __attrs_post_init__(self) -> None:
        for name in ("steps", "batch_size", "block_length", "save_every", "log_every"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name}={value!r} must be a positive integer")
        for name in ("micro_batch_size", "warmup", "lora_rank", "eval_every", "total_length", "pad_length"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, f"{name}={value!r} must be an integer >= 0")
        _check((self.total_length > 0) != (self.pad_length > 0),
               f"set exactly one of total_length (prompt + response, the authors' layout) and pad_length "
               f"(response only), got total_length={self.total_length}, pad_length={self.pad_length}")
        _check(self.lr > 0, f"lr={self.lr} must be > 0")
        try:
            self.masking
        except ConfigError as exc:
            raise ConfigError(f"distill: {exc}") from exc
        _check(self.temperature > 0, f"temperature={self.temperature} must be > 0 (the paper: 0.5)")
        _check(self.entropy_weight >= 0, f"entropy_weight={self.entropy_weight} must be >= 0 (2 LLaDA, 1 Dream)")
        _check(self.weight_decay >= 0 and self.grad_clip > 0, "weight_decay must be >= 0 and grad_clip > 0")
        _check(self.lora_alpha >= 0 and 0.0 <= self.lora_dropout < 1.0,
               "lora_alpha must be >= 0 and lora_dropout in [0, 1)")
        _check(not self.lora_rank or bool(self.lora_targets), "LoRA needs at least one target module name")

    @property
    def masking(self) -> MaskRatio:
        return MaskRatio(self.mask_distribution, self.mask_ratio, self.mask_skew)

    @property
    def width(self) -> int:
        """Columns of the response positions the views are drawn over."""
        return self.total_length or self.pad_length

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        return self.lr


@attrs.frozen
class Outcome:
    """What :func:`distill` did: the log, whether all ``steps`` are done, and the seconds
    trained over every session of the run."""

    records: list[dict] = attrs.field(eq=False)
    finished: bool
    step: int
    seconds: float


def data_fingerprint(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> str:
    """A hash of the training pairs (a resumed run must see the same data)."""
    digest = hashlib.sha256()
    for prompt, response in pairs:
        digest.update(json.dumps([list(prompt), list(response)]).encode())
    return digest.hexdigest()[:16]


def batch_indices(count: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """(batch_size,) rows of step ``step``: consecutive slices of a per-epoch permutation
    seeded by ``(seed, epoch)``, so every row is seen once per epoch."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // count, positions % count
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():  # one or two epochs per step (more only for tiny data)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * epoch + 1))
        here = epochs == epoch
        out[here] = order[offsets[here]]
    return out


def attach_lora(module: torch.nn.Module, config: DistillConfig):
    """Inject LoRA adapters into ``module`` in place; returns the ``peft`` model (for merging)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is in the 'train' extra
        raise ConfigError("LoRA needs peft: pip install 'dllm-strategies[train]'") from exc
    names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    missing = [t for t in config.lora_targets if t not in names]
    _check(not missing, f"LoRA target module(s) {', '.join(missing)} not found in {type(module).__name__}; "
                        f"choose among its linear layers, e.g. {', '.join(LLAMA_PROJECTIONS)}")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                      lora_dropout=config.lora_dropout, target_modules=list(config.lora_targets), bias="none")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing`` alias; nothing of ours does
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(module, lora)


def _set_checkpointing(module: torch.nn.Module, on: bool) -> None:
    """Switch transformers' activation checkpointing (non-reentrant, so frozen inputs are fine for
    LoRA); named ``gradient_checkpointing_*`` before transformers 5."""
    kwargs = {"use_reentrant": False}
    if hasattr(module, "activation_checkpointing_enable"):
        if on:
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            module.activation_checkpointing_disable()
    elif on:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        module.gradient_checkpointing_disable()


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def _save(path: Path, module: torch.nn.Module, optimizer, step: int, records: list, config: DistillConfig,
          data: str, seconds: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"trainable": _trainable_state(module), "optimizer": optimizer.state_dict(), "step": step,
                "records": records, "config": attrs.asdict(config), "data": data, "seconds": seconds}, tmp)
    os.replace(tmp, path)
    (path.parent / "log.json").write_text(json.dumps(records, indent=1))


def _restore(path: Path, module: torch.nn.Module, optimizer, config: DistillConfig, data: str) -> dict:
    saved = torch.load(path, weights_only=False, map_location="cpu")
    if saved["config"] != attrs.asdict(config):
        changed = sorted(k for k, v in attrs.asdict(config).items() if saved["config"].get(k) != v)
        raise ConfigError(f"{path} was written with other settings ({', '.join(changed)} differ); resume with the "
                          "same options or use a new output directory")
    if saved["data"] != data:
        raise ConfigError(f"{path} was trained on other trajectories; resume with the same data or use a new "
                          "output directory")
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    if set(saved["trainable"]) != trainable:
        raise ConfigError(f"{path} holds other trainable parameters than this student; use a new output directory")
    module.load_state_dict(saved["trainable"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    return saved


@attrs.frozen
class Layout:
    """A collated micro-batch: ``batch`` (its response region is the last ``batch.gen_length``
    columns) and, per sample, the column of that region where its response starts
    (``offsets``) and its response length (``lengths``)."""

    batch: Batch
    offsets: torch.Tensor = attrs.field(eq=False)
    lengths: torch.Tensor = attrs.field(eq=False)


def response_lengths(prompts: Sequence[Sequence[int]], config: DistillConfig) -> torch.Tensor:
    """(B,) each sample's response length in the training layout (see :func:`layout`).

    Raises:
        ConfigError: a prompt that leaves no room for a response within ``total_length``.
    """
    if not config.total_length:
        return torch.full((len(prompts),), config.pad_length, dtype=torch.long)
    sizes = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    longest = int(sizes.max())
    _check(longest < config.total_length, f"a prompt has {longest} tokens, which leaves no response within "
                                          f"total_length={config.total_length}; raise it above the longest prompt "
                                          f"(e.g. {longest + 2 * config.block_length}: the prompt and two blocks)")
    return config.total_length - sizes


def layout(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], config: DistillConfig,
           pad_id: int, fill_id: int) -> Layout:
    """Collate one micro-batch in the training layout.

    With ``total_length`` T (the authors' layout) every row is its prompt then its response,
    cut or padded with ``fill_id`` so the row is exactly T tokens: no padding, the response
    starting right after each prompt.  The region kept for the loss is the last
    ``T - shortest prompt`` columns, where sample ``i``'s response starts at
    ``len(prompt_i) - shortest prompt``.  With ``pad_length`` the prompts are left-padded and
    every response is padded to that length (a longer one is an error, as in SFT).
    """
    lengths = response_lengths(prompts, config)
    if not config.total_length:
        longest = max(len(r) for r in responses)
        _check(longest <= config.pad_length, f"a teacher response has {longest} tokens, more than pad_length="
                                             f"{config.pad_length}; raise the pad length to at least {longest}")
        batch = collate(prompts, responses, config.pad_length, pad_id, fill_id)
        return Layout(batch, torch.zeros(len(prompts), dtype=torch.long), lengths)
    total = config.total_length
    rows = []
    for prompt, response, room in zip(prompts, responses, lengths.tolist(), strict=True):
        kept = list(response[:room])
        rows.append(list(prompt) + kept + [fill_id] * (room - len(kept)))
    input_ids = torch.tensor(rows, dtype=torch.long)
    shortest = total - int(lengths.max())
    batch = Batch(input_ids, torch.ones_like(input_ids), torch.arange(total).expand(len(rows), total).clone(),
                  total - shortest)
    offsets = (total - lengths) - shortest
    return Layout(batch, offsets, lengths)


def batch_terms(model: Any, batch: Batch, views: Views, config: DistillConfig) -> LossTerms:
    """Both views of a collated batch through the student in one forward; their loss terms."""
    L = batch.gen_length
    ids = batch.input_ids
    response = ids[:, -L:]
    one, two = views.noisy(response, model.mask_id)
    prompt = ids[:, :-L]
    inputs = torch.cat([torch.cat([prompt, one], 1), torch.cat([prompt, two], 1)], 0)
    logits = model.logits(inputs, attention_mask=batch.attention_mask.repeat(2, 1),
                          position_ids=batch.position_ids.repeat(2, 1), logits_to_keep=L)
    first, second = logits.split(ids.shape[0])
    return certainty_forcing_loss(first, second, response, views.first, views.second,
                                  entropy_weight=config.entropy_weight, temperature=config.temperature)


def _merge(parts: list[LossTerms]) -> LossTerms:
    return LossTerms(per_sample=torch.cat([p.per_sample.detach() for p in parts]),
                     cross_entropy=torch.cat([p.cross_entropy.detach() for p in parts], 1),
                     entropy=torch.cat([p.entropy.detach() for p in parts], 1),
                     masked=torch.cat([p.masked for p in parts], 1), correct=torch.cat([p.correct for p in parts], 1))


def distill(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, config: DistillConfig,
            output_dir: str | Path, evaluate: Callable[[Any, int], dict] | None = None, progress: bool = True,
            log: Callable[[dict], None] | None = None, stop_at: int | None = None) -> Outcome:
    """Train ``model`` (a :class:`~dllm_strategies.models.DiffusionModel`, the student) in place.

    Resumes from ``output_dir/checkpoint.pt`` when present.  ``stop_at`` ends this session
    after that many steps of the run (checkpoint written), to continue later.  When the run
    is finished, LoRA adapters are merged into the weights.  ``evaluate(model, step)`` adds
    metrics (e.g. decode accuracy) every ``eval_every`` steps and at the end.
    """
    from tqdm.auto import tqdm

    _check(len(pairs) > 0, "no training pairs; make trajectories first")
    if config.pad_length:
        longest = max(len(r) for _, r in pairs)
        _check(longest <= config.pad_length, f"a teacher response has {longest} tokens, more than pad_length="
                                             f"{config.pad_length}; raise the pad length to at least {longest}")
    response_lengths([p for p, _ in pairs], config)  # a prompt too long for total_length fails before training
    _check(stop_at is None or stop_at >= 1, f"stop_at={stop_at} must be >= 1")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = output_dir / CHECKPOINT
    module = model.module
    peft_model = attach_lora(module, config) if config.lora_rank else None
    if peft_model is None:
        module.requires_grad_(True)
    if config.gradient_checkpointing:
        _set_checkpointing(module, True)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    data = data_fingerprint(pairs)
    start, records, before = 0, [], 0.0
    if checkpoint.exists():
        saved = _restore(checkpoint, module, optimizer, config, data)
        start, records, before = saved["step"], saved["records"], saved["seconds"]
    pad_id = model.tokenizer.pad_token_id if getattr(model.tokenizer, "pad_token_id", None) is not None \
        else model.fill_id
    end = config.steps if stop_at is None else min(config.steps, stop_at)
    device = model.device
    started = time.monotonic()
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="distill", dynamic_ncols=True)
    module.train()
    for step in range(start, end):
        generator = step_generator(config.seed, step)
        picks = batch_indices(len(pairs), config.batch_size, config.seed, step).tolist()
        lengths = response_lengths([pairs[i][0] for i in picks], config) if config.total_length else None
        views = draw_views(config.batch_size, config.width, block_length=config.block_length,
                           mask_ratio=config.masking, generator=generator, lengths=lengths)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        parts = []
        for first in range(0, config.batch_size, config.micro):
            rows = slice(first, first + config.micro)
            chosen = picks[rows]
            placed = layout([pairs[i][0] for i in chosen], [pairs[i][1] for i in chosen], config, pad_id,
                            model.fill_id)
            batch = placed.batch
            batch = Batch(batch.input_ids.to(device), batch.attention_mask.to(device),
                          batch.position_ids.to(device), batch.gen_length)
            terms = batch_terms(model, batch, views.take(rows).shift(placed.offsets, batch.gen_length).to(device),
                                config)
            (terms.per_sample.sum() / config.batch_size).backward()
            parts.append(terms)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        done = step + 1
        stats = _merge(parts).summary()
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", H=f"{stats['entropy']:.3f}", right=f"{stats['correct']:.2f}")
        seconds = before + time.monotonic() - started
        evaluating = config.eval_every and (done % config.eval_every == 0 or done == config.steps)
        if done % config.log_every == 0 or done == config.steps or evaluating:
            entry = {"step": done, **stats, "lr": config.lr_at(step), "seconds": round(seconds, 1)}
            if evaluating and evaluate is not None:
                module.eval()
                entry.update(evaluate(model, done))
                module.train()
            records.append(entry)
            if log is not None:
                log(entry)
        if done % config.save_every == 0 or done == end:
            _save(checkpoint, module, optimizer, done, records, config, data, seconds)
    bar.close()
    module.eval()
    step = max(start, end)
    finished = step >= config.steps
    if finished and peft_model is not None:
        peft_model.merge_and_unload()
    if config.gradient_checkpointing:
        _set_checkpointing(module, False)
    module.requires_grad_(False)
    return Outcome(records=records, finished=finished, step=step, seconds=before + time.monotonic() - started)
