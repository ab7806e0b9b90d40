"""The compositions that claim an author's decoder give that decoder's tokens.

The references (``dllm_strategies.testing.reference``, the LLaDA one shared with the overhead
benchmark) are written from the papers' algorithms and the authors' public code, as plainly as
possible: Python loops over blocks, steps and rows; the authors' own schedules, dtypes and
comparisons.  Two deliberate rules shared with the core: the mask token is never a candidate
(trained models never predict it; a random model could) and exact ties go to the lowest
position (``torch.topk`` leaves them unspecified).
"""

from __future__ import annotations

import torch

from dllm_arith.tokenizer import build_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from dllm_strategies import decode
from dllm_strategies.models.tiny import tiny_model
from dllm_strategies.testing.reference import (
    dream_reference, dream_transfer_count, entropy_threshold_reference, llada_reference, llada_transfer_schedule,
    threshold_reference,
)


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


@pytest.fixture(scope="module")
def sharp():
    """A random float64 model with a scaled head: confidences spread from about 0.5 to 1 and
    entropies from about 0 to 1, so the thresholds below commit some positions and not others."""
    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, dtype=torch.float64, seed=3)
    with torch.no_grad():
        model.module.lm_head.weight.mul_(300)
    return model


def _prompt(model, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, model.vocab_size, (batch, length), generator=g)
    prompt[prompt == model.mask_id] = 3
    return prompt


@st.composite
def block_shapes(draw):
    block_length = draw(st.sampled_from([2, 4, 8]))
    return (block_length, draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6)),
            draw(st.integers(0, 10_000)))


@settings(max_examples=4, deadline=None)
@given(block_shapes(), st.floats(0.6, 0.99))
def test_threshold_equals_fast_dllm_reference(sharp, shape, tau):
    block_length, num_blocks, batch, prompt_length, seed = shape
    gen_length = block_length * num_blocks
    prompt = _prompt(sharp, batch, prompt_length, seed)
    expected = threshold_reference(sharp.module, prompt, gen_length, block_length, sharp.mask_id, tau)
    with torch.no_grad():
        got = decode(sharp, prompt.tolist(), strategy=f"threshold(tau={tau})", gen_length=gen_length,
                     block_length=block_length)
    assert torch.equal(got.tokens, expected), (got.tokens, expected)


@settings(max_examples=4, deadline=None)
@given(block_shapes(), st.floats(0.02, 0.8))
def test_entropy_threshold_equals_dparallel_reference(sharp, shape, tau):
    block_length, num_blocks, batch, prompt_length, seed = shape
    gen_length = block_length * num_blocks
    prompt = _prompt(sharp, batch, prompt_length, seed)
    expected = entropy_threshold_reference(sharp.module, prompt, gen_length, block_length, sharp.mask_id, tau)
    with torch.no_grad():
        got = decode(sharp, prompt.tolist(), strategy=f"entropy_threshold(tau={tau})", gen_length=gen_length,
                     block_length=block_length)
    assert torch.equal(got.tokens, expected), (got.tokens, expected)


DREAM_SCORES = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}


@settings(max_examples=4, deadline=None)
@given(st.sampled_from(sorted(DREAM_SCORES)), st.integers(2, 12), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 6), st.integers(0, 10_000))
def test_dream_schedule_equals_diffusion_generate_reference(sharp, alg, gen_length, steps_factor, batch,
                                                            prompt_length, seed):
    steps = max(1, gen_length * steps_factor // 2)  # fewer, as many and more steps than tokens
    prompt = _prompt(sharp, batch, prompt_length, seed)
    expected = dream_reference(sharp.module, prompt, gen_length, steps, sharp.mask_id, alg)
    with torch.no_grad():
        got = decode(sharp, prompt.tolist(), strategy=f"dream_schedule+{DREAM_SCORES[alg]}", gen_length=gen_length,
                     steps=steps)
    assert torch.equal(got.tokens, expected), (got.tokens, expected)
    # Dream's loop runs exactly `steps` forwards, empty steps included; so does the plugin's.
    assert got.steps.tolist() == [steps] * batch and got.nfe.tolist() == [steps] * batch
    assert int(got.forced.sum()) == 0


def test_dream_transfer_count_is_dreams_formula():
    counts, masked = [], 64
    for i in range(64):
        counts.append(dream_transfer_count(masked, i, 64))
        masked -= counts[-1]
    assert counts[0] == 0 and counts[-1] == 2 and sum(counts) == 64
