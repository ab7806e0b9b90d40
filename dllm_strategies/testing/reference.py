"""Plain, independent implementations of the authors' decoding loops.

Each is written from the paper's algorithm and the authors' public code as plainly as possible
(nested loops over blocks, steps and rows; the authors' own schedules, dtypes and comparisons)
and shares no code with the decode loop:

* :func:`llada_reference`: LLaDA's ``generate`` (low-confidence, semi-autoregressive);
* :func:`threshold_reference`: Fast-dLLM's confidence threshold (its ``generate`` with
  ``threshold``);
* :func:`entropy_threshold_reference`: dParallel's entropy threshold;
* :func:`dream_reference`: Dream's ``diffusion_generate`` with ``maskgit_plus``,
  ``topk_margin`` or ``entropy``.

The tests check the matching compositions against them token for token, and
``dllm_harness.bench_overhead`` times the plugin loop against the LLaDA one.  Two rules are
shared with the core, both where the authors' code leaves the outcome to chance: the mask
token is never a candidate (a trained model never predicts it; a random one could), and exact
ties go to the lowest position (``torch.topk`` leaves their order unspecified).  The model is
called on the whole sequence and must return logits aligned with it (position i scores token
i; Dream's shift is undone by the model adapter, checked in the model tests).
"""

from __future__ import annotations

import torch

DREAM_ALGS = ("maskgit_plus", "topk_margin", "entropy")


def llada_transfer_schedule(masked_in_block: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps): ``masked // steps`` per step, one more on the first ``masked % steps`` steps."""
    base = masked_in_block // steps
    remainder = masked_in_block % steps
    schedule = base[:, None].repeat(1, steps)
    for row in range(schedule.shape[0]):
        schedule[row, : int(remainder[row])] += 1
    return schedule


def dream_transfer_count(masked: int, step: int, steps: int, eps: float = 1e-3, device=None) -> int:
    """Tokens Dream's ``diffusion_generate`` commits at ``step`` (0-based) with ``masked`` left:
    ``int(masked * (1 - s / t))`` over ``linspace(1, eps, steps + 1)`` in float32, everything
    at the last step."""
    if step == steps - 1:
        return masked
    timesteps = torch.linspace(1, eps, steps + 1, device=device)
    t, s = timesteps[step], timesteps[step + 1]
    return int(torch.tensor(float(masked), device=device) * (1 - s / t))


def _best(values: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices of the ``k`` largest (or smallest) of a row's ``values``; exact ties to the
    lower index (a stable sort)."""
    return torch.sort(values, descending=largest, stable=True).indices[:k]


def _candidates(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    banned = logits.clone()
    banned[..., mask_id] = float("-inf")
    return banned.argmax(-1)


def _logits(module, x: torch.Tensor, gen_length: int) -> torch.Tensor:
    return module(input_ids=x, logits_to_keep=gen_length, use_cache=False).logits  # = logits[:, P:]


@torch.no_grad()
def llada_reference(module, prompt: torch.Tensor, gen_length: int, block_length: int, steps: int,
                    mask_id: int) -> torch.Tensor:
    """LLaDA's ``generate``, greedy, ``remasking='low_confidence'``: per block its linear
    transfer schedule; the confidence is ``softmax(logits)`` in the logits' dtype, gathered."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        lo, hi = block * block_length, (block + 1) * block_length
        schedule = llada_transfer_schedule((x[:, P + lo:P + hi] == mask_id).sum(1), steps_per_block)
        for i in range(steps_per_block):
            logits = _logits(module, x, gen_length)
            x0 = _candidates(logits, mask_id)
            p = torch.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = float("-inf")
            confidence = torch.where(x[:, P:] == mask_id, x0_p, float("-inf"))
            for row in range(B):
                chosen = _best(confidence[row], int(schedule[row, i]))
                x[row, P + chosen] = x0[row, chosen]
    return x[:, P:]


@torch.no_grad()
def threshold_reference(module, prompt: torch.Tensor, gen_length: int, block_length: int, mask_id: int,
                        tau: float = 0.9) -> torch.Tensor:
    """Fast-dLLM's ``generate(threshold=tau)``: per block, until it has no mask, one forward and
    the block's masked positions by float64-softmax confidence; the first always commits, the
    others unless below ``tau``."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    for block in range(gen_length // block_length):
        lo, hi = block * block_length, (block + 1) * block_length
        while bool((x[:, P + lo:P + hi] == mask_id).any()):
            logits = _logits(module, x, gen_length)
            x0 = _candidates(logits, mask_id)
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            masked = x[:, P:] == mask_id
            masked[:, :lo] = masked[:, hi:] = False
            confidence = torch.where(masked, x0_p, float("-inf"))
            for row in range(B):
                chosen = _best(confidence[row], int(masked[row].sum()))
                keep = chosen[:1].tolist() + [int(j) for j in chosen[1:] if not confidence[row, j] < tau]
                x[row, P + torch.tensor(keep, dtype=torch.long)] = x0[row, keep]
    return x[:, P:]


@torch.no_grad()
def entropy_threshold_reference(module, prompt: torch.Tensor, gen_length: int, block_length: int, mask_id: int,
                                tau: float = 0.5) -> torch.Tensor:
    """dParallel's ``generate(threshold=tau)``: per block, until it has no mask, the entropy
    ``-sum p * log(p + 1e-12)`` of a float64 softmax; the lowest-entropy masked position always
    commits, the others unless above ``tau``."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    for block in range(gen_length // block_length):
        lo, hi = block * block_length, (block + 1) * block_length
        while bool((x[:, P + lo:P + hi] == mask_id).any()):
            logits = _logits(module, x, gen_length)
            x0 = _candidates(logits, mask_id)
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            entropy = -torch.sum(p * torch.log(p + 1e-12), dim=-1)
            masked = x[:, P:] == mask_id
            masked[:, :lo] = masked[:, hi:] = False
            h = torch.where(masked, entropy, float("inf"))
            for row in range(B):
                chosen = _best(h[row], int(masked[row].sum()), largest=False)
                keep = chosen[:1].tolist() + [int(j) for j in chosen[1:] if not h[row, j] > tau]
                x[row, P + torch.tensor(keep, dtype=torch.long)] = x0[row, keep]
    return x[:, P:]


@torch.no_grad()
def dream_reference(module, prompt: torch.Tensor, gen_length: int, steps: int, mask_id: int,
                    alg: str = "maskgit_plus", eps: float = 1e-3) -> torch.Tensor:
    """Dream's ``diffusion_generate``, greedy (temperature 0, no ``alg_temp``), whole response
    as one block: at step i commit :func:`dream_transfer_count` masked positions with the
    highest score, all in the logits' dtype: ``maskgit_plus`` the top-1 probability,
    ``topk_margin`` top-1 minus top-2, ``entropy`` ``sum p * log(p + 1e-10)``.  Dream counts
    the masks of the whole batch divided by its size: the same number for every row here."""
    if alg not in DREAM_ALGS:
        raise ValueError(f"alg must be one of {DREAM_ALGS}, got {alg!r}")
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    for i in range(steps):
        mask_index = x[:, P:] == mask_id
        logits = _logits(module, x, gen_length)
        x0 = _candidates(logits, mask_id)
        probs = torch.softmax(logits, dim=-1)
        if alg == "maskgit_plus":
            score = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
        elif alg == "topk_margin":
            ranked = torch.sort(probs, dim=-1, descending=True).values
            score = ranked[..., 0] - ranked[..., 1]
        else:
            score = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        count = dream_transfer_count(int(mask_index.sum()) // B, i, steps, eps, device=x.device)
        score = torch.where(mask_index, score, float("-inf"))
        for row in range(B):
            chosen = _best(score[row], count)
            x[row, P + chosen] = x0[row, chosen]
    return x[:, P:]
