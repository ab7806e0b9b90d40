"""A plain, independent implementation of LLaDA's low-confidence semi-autoregressive decoding.

Written from the paper's algorithm and its public ``generate`` as plainly as possible (nested
loops over blocks, steps and rows; LLaDA's transfer schedule; a float64 softmax); it shares no
code with the decode loop.  The tests check the default composition against it token for
token, and ``dllm_harness.bench_overhead`` times the plugin loop against it.  One rule shared
with the core: the mask token is never a candidate.
"""

from __future__ import annotations

import torch


def llada_transfer_schedule(masked_in_block: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps): ``masked // steps`` per step, one more on the first ``masked % steps`` steps."""
    base = masked_in_block // steps
    remainder = masked_in_block % steps
    schedule = base[:, None].repeat(1, steps)
    for row in range(schedule.shape[0]):
        schedule[row, : int(remainder[row])] += 1
    return schedule


@torch.no_grad()
def llada_reference(module, prompt: torch.Tensor, gen_length: int, block_length: int, steps: int,
                    mask_id: int) -> torch.Tensor:
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        schedule = llada_transfer_schedule((x[:, lo:hi] == mask_id).sum(1), steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = module(input_ids=x, logits_to_keep=gen_length, use_cache=False).logits  # = logits[:, P:]
            candidates = logits.clone()
            candidates[..., mask_id] = float("-inf")
            x0 = candidates.argmax(-1)
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi - P:] = float("-inf")
            x0 = torch.where(mask_index[:, P:], x0, x[:, P:])
            confidence = torch.where(mask_index[:, P:], x0_p,
                                     torch.tensor(float("-inf"), dtype=torch.float64, device=x.device))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for row in range(B):
                k = int(schedule[row, i])
                if k:
                    _, index = torch.topk(confidence[row], k=k)
                    transfer[row, index] = True
            response = x[:, P:]
            response[transfer] = x0[transfer]
    return x[:, P:]
