"""Masked-diffusion supervised fine-tuning, as LLaDA describes it.

For each (prompt, response) pair the prompt stays clean; the response (closed by
end-of-turn, then padded with end-of-text to the generation length, so the model learns
to fill the tail with end-of-text) has each token masked with probability
``p = (1 - eps) * t + eps``, ``t ~ U(0, 1)`` per sample.  The loss is the cross-entropy on
masked positions weighted by ``1 / p``, summed and divided by the response length, averaged
over the batch.

The layout matches decoding: prompts are left-padded (attention mask, position ids from
the first real token) so the response region is the last ``gen_length`` columns.

Cropped tails (``TrainConfig.eot_crop``): with that probability a sample's canvas ends after a
random number (at least one) of its end-of-text tail, the rest left out of attention and of the
loss, exactly the canvas a decoder sees once End-of-Text truncation has cut a row.  A model
trained only on full-length canvases has never seen one.

Every random draw of step ``s`` comes from a generator seeded by ``(seed, s)``, so a run
resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

from dllm_strategies.errors import ConfigError

EPS = 1e-3
CHECKPOINT = "checkpoint.pt"


@attrs.frozen
class Batch:
    """A padded training batch: ``input_ids`` (B, P+L) clean, ``attention_mask``,
    ``position_ids``, ``gen_length`` L (the response region is the last L columns).  A row whose
    canvas was cropped has ``attention_mask`` 0 on the columns behind its crop."""

    input_ids: torch.Tensor = attrs.field(eq=False)
    attention_mask: torch.Tensor = attrs.field(eq=False)
    position_ids: torch.Tensor = attrs.field(eq=False)
    gen_length: int


def collate(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
            gen_length: int, pad_id: int, fill_id: int, live: Sequence[int] | None = None) -> Batch:
    """Left-pad prompts with ``pad_id``; pad responses to ``gen_length`` with ``fill_id``.

    ``live`` (optional): per row, how many response columns stay in the canvas (at least the
    response itself, at most ``gen_length``); the columns behind are out of attention.
    A response longer than ``gen_length`` is an error (never silently truncated).
    """
    width = max(len(p) for p in prompts)
    live = [gen_length] * len(prompts) if live is None else live
    rows, masks = [], []
    for prompt, response, keep in zip(prompts, responses, live, strict=True):
        if len(response) > gen_length:
            raise ConfigError(
                f"response of {len(response)} tokens does not fit gen_length={gen_length}; "
                "raise the generation length"
            )
        if not len(response) <= keep <= gen_length:
            raise ConfigError(f"live length {keep} must lie between the response's {len(response)} tokens "
                              f"and gen_length={gen_length}")
        pad = width - len(prompt)
        rows.append([pad_id] * pad + list(prompt) + list(response) + [fill_id] * (gen_length - len(response)))
        masks.append([0] * pad + [1] * (len(prompt) + keep) + [0] * (gen_length - keep))
    input_ids = torch.tensor(rows, dtype=torch.long)
    attention_mask = torch.tensor(masks, dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attention_mask, position_ids, gen_length)


def masked_diffusion_loss(model, batch: Batch, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's SFT loss on one batch (see the module docstring)."""
    ids, L = batch.input_ids, batch.gen_length
    B = ids.shape[0]
    t = torch.rand(B, 1, generator=generator, device=ids.device)
    p = (1 - EPS) * t + EPS
    masked = torch.rand(B, L, generator=generator, device=ids.device) < p
    noisy = ids.clone()
    noisy[:, -L:] = torch.where(masked, torch.full_like(ids[:, -L:], mask_id), ids[:, -L:])
    logits = model(
        input_ids=noisy, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
        logits_to_keep=L,
    ).logits
    ce = F.cross_entropy(logits.float().transpose(1, 2), ids[:, -L:], reduction="none")
    in_canvas = batch.attention_mask[:, -L:].bool()
    return ((ce / p) * (masked & in_canvas)).sum() / (L * B)


@attrs.frozen
class TrainConfig:
    """Optimisation settings of :func:`train`.

    Attributes:
        steps: optimiser steps in the whole run (the cosine schedule spans them).
        batch_size: samples per step.
        lr: peak learning rate (AdamW), reached after ``warmup`` steps, cosine to 10%.
        gen_lengths / gen_length_weights: each batch pads its responses to one of these
            lengths, drawn with these weights (long tails teach long end-of-text fills).
        eot_crop: probability that a sample's canvas is cropped after a uniformly drawn number
            (1 to all) of its end-of-text tail tokens (see the module docstring); 0 never crops.
        eval_every / save_every: validation and checkpoint periods, in steps.
    """

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1.5e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    gen_lengths: tuple[int, ...] = (64, 256)
    gen_length_weights: tuple[float, ...] = (0.85, 0.15)
    eval_every: int = 200
    save_every: int = 50
    eot_crop: float = attrs.field(default=0.0, validator=attrs.validators.and_(
        attrs.validators.ge(0.0), attrs.validators.le(1.0)))

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def cropped_lengths(response_lengths: Sequence[int], gen_length: int, rate: float,
                    generator: torch.Generator) -> list[int]:
    """Per row, the response columns its canvas keeps: with probability ``rate`` the response and
    ``k`` of its end-of-text tail, ``k`` uniform over 1..tail (a row with no tail is never cropped);
    otherwise all ``gen_length``."""
    lengths = torch.tensor(response_lengths, dtype=torch.long)
    crop = torch.rand(len(lengths), generator=generator) < rate
    tail = gen_length - lengths
    kept = torch.minimum(1 + (torch.rand(len(lengths), generator=generator) * tail).long(), tail)
    return torch.where(crop & (tail > 0), lengths + kept, torch.full_like(lengths, gen_length)).tolist()


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of training step ``step`` (resumes reproduce them)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def train(model, train_pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
          validation_pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
          *, mask_id: int, pad_id: int, fill_id: int, output_dir: str | Path,
          config: TrainConfig = TrainConfig(),
          evaluate: Callable[[object, int], dict] | None = None,
          progress: bool = True, log: Callable[[dict], None] | None = None, data: dict | None = None):
    """Train ``model`` in place with the masked-diffusion SFT loss; resumes from
    ``output_dir/checkpoint.pt`` when present.  Returns the list of logged records.

    ``evaluate(model, step)`` (optional) adds metrics, e.g. decode accuracy, to each
    validation record.  ``data`` (optional, JSON-like) names what the pairs were made from (a
    recipe's task difficulty and sizes): it is saved with the checkpoint, and a resume with other
    data is refused, as one with another ``config`` is.
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    saved = load_checkpoint(output_dir, config, data) if (output_dir / CHECKPOINT).exists() else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    start, records = 0, []
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, records = saved["step"], saved["records"]

    def record(entry: dict) -> None:
        records.append(entry)
        if log is not None:
            log(entry)

    weights = torch.tensor(config.gen_length_weights, dtype=torch.float)
    bar = tqdm(total=config.steps, initial=start, disable=None if progress else True, desc="train", dynamic_ncols=True)
    started = time.monotonic()
    model.train()
    for step in range(start, config.steps):
        generator = step_generator(config.seed, step)
        picks = torch.randint(len(train_pairs), (config.batch_size,), generator=generator).tolist()
        gen_length = config.gen_lengths[int(torch.multinomial(weights, 1, generator=generator))]
        responses = [train_pairs[i][1] for i in picks]
        # no crop draws at eot_crop=0: such a run draws exactly what runs before the option drew
        live = (cropped_lengths([len(r) for r in responses], gen_length, config.eot_crop, generator)
                if config.eot_crop > 0 else None)
        batch = collate([train_pairs[i][0] for i in picks], responses, gen_length, pad_id, fill_id, live)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        loss = masked_diffusion_loss(model, batch, mask_id, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", L=gen_length)
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            entry = {"step": done, "train_loss": loss.item(),
                     "validation_loss": validation_loss(model, validation_pairs, mask_id, pad_id, fill_id,
                                                        config.gen_lengths[0], config.seed),
                     "seconds": time.monotonic() - started}
            if evaluate is not None:
                model.eval()
                entry.update(evaluate(model, done))
                model.train()
            record(entry)
        if done % config.save_every == 0 or done == config.steps:
            _save_checkpoint(output_dir / CHECKPOINT, model, optimizer, done, records, config, data)
    bar.close()
    model.eval()
    return records


@torch.no_grad()
def validation_loss(model, pairs, mask_id: int, pad_id: int, fill_id: int, gen_length: int,
                    seed: int, batch_size: int = 128) -> float:
    """The SFT loss over ``pairs`` with fixed masks (same every call: comparable over time)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = collate([p for p, _ in chunk], [r for _, r in chunk], gen_length, pad_id, fill_id)
        generator = step_generator(seed + 7, start)
        total += masked_diffusion_loss(model, batch, mask_id, generator).item() * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / max(count, 1)


def load_checkpoint(output_dir: str | Path, config: TrainConfig, data: dict | None = None) -> dict:
    """The resumable checkpoint in ``output_dir`` (model, optimizer, step, records), which must
    have been written with the same ``config`` and, when both name it, the same ``data``."""
    checkpoint = Path(output_dir) / CHECKPOINT
    if not checkpoint.exists():
        raise ConfigError(f"no training checkpoint at {checkpoint}; run the training with the same options first")
    saved = torch.load(checkpoint, weights_only=False)
    defaults = {f.name: f.default for f in attrs.fields(TrainConfig)}  # options added since it was written
    if {**defaults, **saved["config"]} != attrs.asdict(config):
        raise ConfigError(
            f"{checkpoint} was written with another training config; "
            "use a new output directory or the same options"
        )
    written = saved.get("data")
    if data is not None and written is not None and written != data:
        changed = sorted(key for key in {**written, **data} if written.get(key) != data.get(key))
        raise ConfigError(f"{checkpoint} was trained on other data ({', '.join(changed)} differ: written "
                          f"{ {k: written.get(k) for k in changed} }); use a new output directory or the same options")
    return saved


def _save_checkpoint(path: Path, model, optimizer, step: int, records: list, config: TrainConfig,
                     data: dict | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "records": records, "config": attrs.asdict(config), "data": data}, tmp)
    os.replace(tmp, path)
    (path.parent / "log.json").write_text(json.dumps(records, indent=1))
