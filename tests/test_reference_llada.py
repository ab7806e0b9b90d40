"""The default composition is LLaDA's published low-confidence semi-autoregressive decoding.

The reference (``dllm_strategies.testing.reference``, shared with the overhead benchmark) is written from the paper's algorithm (and its public ``generate``), as
plainly as possible: nested Python loops over blocks, steps and rows; LLaDA's own transfer
schedule; a float64 softmax.  One deliberate rule shared with the core: the mask token is
never a candidate (LLaDA's trained models never predict it; a random model could).
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_strategies import decode
from dllm_strategies.testing.reference import llada_reference, llada_transfer_schedule


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
