"""Prophet: stop early and fill the whole row once the answer is certain (hook
``dllm_remask``)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from dllm_strategies import hookimpl, ops
from dllm_strategies.errors import ConfigError
from dllm_strategies.plugin import Plugin
from dllm_strategies.state import Commit, DecodeState, Plan, Proposal

from dllm_second_wave.validate import count, non_negative


def _one_anchor(instance, attribute, value) -> None:
    if value and instance.anchor:
        raise ValueError(f"anchor={instance.anchor!r} and marker={value!r} are both set; choose one way to find "
                         "the answer (anchor pins a phrase at anchor_at, marker waits for the model to write it)")


def logit_gap(values: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 *logit* (not probability) per position of (..., V) logits."""
    top = values.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


class Prophet(Plugin):
    """Prophet (early commit-all): decode with LLaDA's schedule (the ``plan.budget``
    best-scored masked positions of the block), and at every step average the top-1 minus
    top-2 logit gap over an answer window of ``answer_length`` positions.  When the mean reaches
    the threshold of the current phase (``early`` while ``step / steps < 1/3``, ``mid`` below
    2/3, ``late`` after), fill every masked position of the whole row with this step's
    candidates (greedy: the argmax) at once; the row then ends.
    (Li et al., "Diffusion Language Models Know the Answer Before Decoding", arXiv 2508.19982,
    github.com/pixeli99/Prophet.)

    Where the answer window is (the first that applies):

    - ``anchor="The answer is"``: the authors' GSM8K mode.  The phrase's tokens are pinned at
      generation offset ``anchor_at`` (committed at step 0, like any commit they never change)
      and the window is the ``answer_length`` positions right after it.
    - ``marker="####"``: for tasks whose model writes its own answer marker (the shipped
      arithmetic task ends with ``#### <number>``).  The window is the ``answer_length``
      positions after the first committed marker token; before the marker is committed there
      is no window and no exit.  **A benchmark on the shipped task should use
      ``prophet(marker="####")``**: pinning a phrase the model never saw in training at a
      fixed offset would change what it writes.
    - neither: ``unanchored="masked"`` (default) watches every still-masked position of the
      row (the whole remaining response is the answer, as in short-answer tasks);
      ``unanchored="off"`` turns the exit off, as the authors' code does without an anchor
      (then this is plain LLaDA decoding).

    Positions cut by end-of-text truncation are never watched; a window that a step's logits
    do not fully cover (a cached forward) does not exit that step.

    Options:
        early / mid / late: gap thresholds of the three phases (7.5 / 5.0 / 2.5).
        answer_length: positions in the answer window (5).
        anchor / anchor_at: phrase to pin and its generation offset (off / 200).
        marker: answer-marker token (off).
        unanchored: what the exit watches without anchor and marker ("masked").

    State: the pinned anchor (columns and token ids) and the marker id, set in ``dllm_start``.
    """

    conflicts = {"dual_cache": "the dual cache returns logits for the current block only, so Prophet could "
                               "never fill the whole row; use prefix_cache"}

    @attrs.frozen
    class Options:
        early: float = attrs.field(default=7.5, validator=non_negative)
        mid: float = attrs.field(default=5.0, validator=non_negative)
        late: float = attrs.field(default=2.5, validator=non_negative)
        answer_length: int = attrs.field(default=5, validator=count(1))
        anchor: str = ""
        anchor_at: int = attrs.field(default=200, validator=count(0))
        marker: str = attrs.field(default="", validator=_one_anchor)
        unanchored: Literal["masked", "off"] = attrs.field(
            default="masked", validator=attrs.validators.in_(("masked", "off")))

    @hookimpl
    def dllm_start(self, state: DecodeState, model) -> None:
        options, G = self.options, state.config.gen_length
        self.pinned = torch.zeros(G, dtype=torch.bool, device=state.device)
        self.pin_tokens = torch.full((G,), state.config.mask_id, dtype=torch.long, device=state.device)
        self.answer = torch.zeros(G, dtype=torch.bool, device=state.device)
        self.marker_id: int | None = None
        if options.anchor:
            ids = _phrase_ids(model, options.anchor, state.config.mask_id)
            end = options.anchor_at + len(ids)
            if end + options.answer_length > G:
                raise ConfigError(
                    f"prophet's anchor {options.anchor!r} ({len(ids)} tokens) at anchor_at={options.anchor_at} plus "
                    f"answer_length={options.answer_length} needs gen_length >= {end + options.answer_length}, "
                    f"got {G}; lower anchor_at or raise gen_length"
                )
            self.pinned[options.anchor_at:end] = True
            self.pin_tokens[options.anchor_at:end] = torch.tensor(ids, device=state.device)
            self.answer[end:end + options.answer_length] = True
        elif options.marker:
            self.marker_id = _token_id(model, options.marker, state.config.mask_id)

    def watched(self, state: DecodeState) -> torch.Tensor:
        """(B, G) bool: the answer window of each live row this step."""
        options = self.options
        if options.anchor:
            window = self.answer[None, :].expand(state.batch_size, -1)
        elif self.marker_id is not None:
            found = (state.response == self.marker_id) & ~state.masked
            first = found.long().argmax(1, keepdim=True)
            offset = state.columns[None, :] - first
            window = found.any(1, keepdim=True) & (offset >= 1) & (offset <= options.answer_length)
        elif options.unanchored == "masked":
            window = state.masked
        else:
            window = torch.zeros_like(state.masked)
        return window & state.live

    def exits(self, state: DecodeState, proposal: Proposal) -> torch.Tensor:
        """(B,) bool: rows whose mean answer-window gap clears this phase's threshold."""
        options, G = self.options, state.config.gen_length
        logits = proposal.logits
        gap = logits.widen(logit_gap(logits.values), float("nan"), G)
        watched = self.watched(state)
        unseen = (watched & torch.isnan(gap)).any(1)
        mean = (gap.nan_to_num(0.0) * watched).sum(1) / watched.sum(1).clamp(min=1)
        thirds = 3 * state.taken  # progress = taken / steps, compared in integers: 3 taken < steps <=> below 1/3
        steps = state.config.steps
        bar = torch.where(thirds < steps, options.early, torch.where(thirds < 2 * steps, options.mid, options.late))
        reachable = ~(state.masked & (proposal.tokens == state.config.mask_id)).any(1)
        return watched.any(1) & ~unseen & (mean >= bar) & reachable

    @hookimpl
    def dllm_remask(self, state: DecodeState, proposal: Proposal, plan: Plan) -> Commit:
        pinning = state.step == 0 and bool(self.options.anchor)
        pin = self.pinned[None, :] & state.masked if pinning else torch.zeros_like(state.masked)
        base = ops.top_k_mask(proposal.scores, plan.budget, plan.window(state) & ~pin)
        fill = state.masked & self.exits(state, proposal)[:, None]
        tokens = torch.where(pin, self.pin_tokens[None, :], proposal.tokens) if pinning else None
        return Commit(mask=base | pin | fill, tokens=tokens)


def _tokenizer(model, what: str):
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"prophet's {what} needs a model with a tokenizer; this model has none "
                          "(use unanchored='masked' or 'off' instead)")
    return tokenizer


def _phrase_ids(model, phrase: str, mask_id: int) -> list[int]:
    tokenizer = _tokenizer(model, f"anchor {phrase!r}")
    ids = list(tokenizer(phrase, add_special_tokens=False)["input_ids"])
    unknown = getattr(tokenizer, "unk_token_id", None)
    if not ids or mask_id in ids or (unknown is not None and unknown in ids):
        raise ConfigError(f"prophet's anchor {phrase!r} tokenizes to {ids}, which is empty or holds the unknown or "
                          "mask token; use words the model's tokenizer knows")
    return ids


def _token_id(model, token: str, mask_id: int) -> int:
    tokenizer = _tokenizer(model, f"marker {token!r}")
    found = tokenizer.convert_tokens_to_ids(token)
    unknown = getattr(tokenizer, "unk_token_id", None)
    if found is None or found == mask_id or (found == unknown and token != getattr(tokenizer, "unk_token", None)):
        raise ConfigError(f"prophet's marker {token!r} is not a single token of the model's tokenizer; give a "
                          "token it has (the shipped task's is '####')")
    return int(found)
