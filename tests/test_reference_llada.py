"""The default composition is LLaDA's published low-confidence semi-autoregressive decoding.

The reference below is written from the paper's algorithm (and its public ``generate``), as
plainly as possible: nested Python loops over blocks, steps and rows; LLaDA's own transfer
schedule; a float64 softmax.  One deliberate rule shared with the core: the mask token is
never a candidate (LLaDA's trained models never predict it; a random model could).
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_strategies import decode


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
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        schedule = llada_transfer_schedule((x[:, lo:hi] == mask_id).sum(1), steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = module(input_ids=x).logits
            candidates = logits.clone()
            candidates[..., mask_id] = float("-inf")
            x0 = candidates.argmax(-1)
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf"), dtype=torch.float64))
            transfer = torch.zeros_like(x, dtype=torch.bool)
            for row in range(B):
                k = int(schedule[row, i])
                if k:
                    _, index = torch.topk(confidence[row], k=k)
                    transfer[row, index] = True
            x[transfer] = x0[transfer]
    return x[:, P:]


@st.composite
def shapes(draw):
    block_length = draw(st.sampled_from([2, 4, 8]))
    num_blocks = draw(st.integers(1, 3))
    steps_per_block = draw(st.integers(1, block_length + 2))
    batch = draw(st.integers(1, 3))
    prompt_length = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 10_000))
    return block_length, num_blocks, steps_per_block, batch, prompt_length, seed


@settings(max_examples=12, deadline=None)
@given(shapes())
def test_default_composition_equals_llada_reference(tiny, shape):
    block_length, num_blocks, steps_per_block, batch, prompt_length, seed = shape
    gen_length = block_length * num_blocks
    steps = steps_per_block * num_blocks
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, tiny.vocab_size, (batch, prompt_length), generator=g)
    prompt[prompt == tiny.mask_id] = 3
    expected = llada_reference(tiny.module, prompt, gen_length, block_length, steps, tiny.mask_id)
    with torch.no_grad():
        got = decode(tiny, prompt.tolist(), gen_length=gen_length, block_length=block_length, steps=steps)
    assert torch.equal(got.tokens, expected), (got.tokens, expected)
    # The same holds when the default is named explicitly as a plugin.
    with torch.no_grad():
        named = decode(tiny, prompt.tolist(), strategy="low_confidence", gen_length=gen_length,
                       block_length=block_length, steps=steps)
    assert torch.equal(named.tokens, expected)
    assert int(got.forced.sum()) == 0


def test_reference_schedule_matches_llada_formula():
    assert llada_transfer_schedule(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert llada_transfer_schedule(torch.tensor([3]), 5).tolist() == [[1, 1, 1, 0, 0]]
