"""DiffusionGemma: transformers' own ``generate()`` pinned on a tiny random model, and our decode
loop reproducing it token for token (uniform-state process, exact encoder cache)."""

from __future__ import annotations

import attrs
import pytest
import torch
from transformers.cache_utils import DynamicCache

from dllm_strategies import ConfigError, SpecError, Strategy, decode
from dllm_strategies.models.diffusion_gemma import Generation, tiny_diffusion_gemma
from dllm_strategies.models.tiny import tiny_model
from dllm_strategies.testing import check_strategy_property
from dllm_strategies.testing.processes import kit_diffusion_gemma

PROMPTS = ["Tom has 3 apples", "hi", "What is two plus two ?", "abc def"]
# Canvases stop at different steps (stability 0: confidence alone decides), and rows end at
# different canvases (row 2 in its first): every branch of generate's loop runs.
STOPPING = Generation(max_denoising_steps=6, stability_threshold=0, confidence_threshold=0.6)
# transformers' defaults with fewer steps: stability 1 (the argmax must repeat).
DEFAULTS = Generation(max_denoising_steps=6)


@pytest.fixture(scope="module")
def dg():
    return tiny_diffusion_gemma(sharpness=30.0, seed=1)


def batch(model, prompts):
    rows = [model.tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[model.fill_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, mask


def generate(model, ids, mask, *, seed: int, canvases: int, generation: Generation):
    """``model.generate()`` seeded; (new tokens (B, canvases * L) padded with pad, decoder passes (B,))."""
    g = generation
    torch.manual_seed(seed)
    out = model.module.generate(
        ids, attention_mask=mask, max_new_tokens=canvases * model.block_length,
        max_denoising_steps=g.max_denoising_steps, t_min=g.t_min, t_max=g.t_max,
        stability_threshold=g.stability_threshold, confidence_threshold=g.confidence_threshold,
        eos_token_id=list(model.eot_ids), pad_token_id=model.fill_id)
    new = out.sequences[:, ids.shape[1]:]
    # generate reports tokens_per_forward = (non-pad tokens) / decoder_forward_passes, per row.
    valid = (new != model.fill_id).sum(1)
    passes = torch.round(valid / out.tokens_per_forward).long()
    width = canvases * model.block_length
    padded = torch.nn.functional.pad(new, (0, width - new.shape[1]), value=model.fill_id)
    return padded, passes


def reference(model, ids, mask, *, seed: int, canvases: int, generation: Generation):
    """generate's loop written out from PAPERS.md ("Block diffusion"): per canvas one encoder
    pass, a randint canvas, then per pass multinomial then randint; entropy-bound acceptance;
    stable-and-confident stop; end-of-text handling after each canvas."""
    g, module, L, V = generation, model.module, model.block_length, model.vocab_size
    B, P = ids.shape
    rng = torch.Generator().manual_seed(seed)
    cache = DynamicCache(config=module.config.get_text_config(decoder=True))
    attention, out = mask.clone(), []
    finished = torch.zeros(B, dtype=torch.bool)
    passes = torch.zeros(B, dtype=torch.long)
    enc_ids, enc_pos = ids, torch.arange(P)[None]
    eos = torch.tensor(model.eot_ids)
    for k in range(canvases):
        encoder = module.model.encoder
        masks = encoder.create_masks_for_generate(config=module.config, inputs_embeds=torch.empty(B, enc_ids.shape[1], 0),
                                                  attention_mask=attention, cache=cache, position_ids=enc_pos)
        encoder(input_ids=enc_ids, attention_mask=masks, cache=cache, position_ids=enc_pos)
        canvas = torch.randint(0, V, (B, L), generator=rng)
        dec_pos = torch.arange(P + k * L, P + (k + 1) * L)[None]
        dec_masks = module.model.decoder.create_diffusion_decoder_attention_mask(
            config=module.config, inputs_embeds=canvas.unsqueeze(-1), cache=cache,
            decoder_attention_mask=torch.nn.functional.pad(attention, (0, L), value=True))
        sc, argmax, done, history = None, canvas, torch.zeros(B, dtype=torch.bool), None
        for step in range(g.max_denoising_steps, 0, -1):
            passes += ~(done | finished)
            raw = module(decoder_input_ids=canvas, self_conditioning_logits=sc, decoder_attention_mask=dec_masks,
                         cache=cache, decoder_position_ids=dec_pos).logits
            temperature = g.t_min + (g.t_max - g.t_min) * (torch.tensor(step, dtype=torch.int32) / g.max_denoising_steps)
            processed = raw / temperature
            sample = torch.multinomial(torch.softmax(processed, -1, dtype=torch.float32).view(-1, V), 1,
                                       generator=rng).view(B, L)
            new_argmax = processed.argmax(-1)
            entropy = torch.distributions.Categorical(logits=processed).entropy()
            ordered, order = torch.sort(entropy, -1)
            accepted = torch.zeros_like(entropy, dtype=torch.bool).scatter(
                -1, order, torch.cumsum(ordered, -1) - ordered <= g.entropy_bound)
            noise = torch.randint(0, V, (B, L), generator=rng)
            new_canvas = torch.where(accepted, sample, noise)
            if done.any():
                new_argmax = torch.where(done[:, None], argmax, new_argmax)
                new_canvas = torch.where(done[:, None], canvas, new_canvas)
                processed = torch.where(done[:, None, None], sc, processed)
            if g.stability_threshold == 0:
                stable = torch.ones(B, dtype=torch.bool)
            else:
                stable = (history == new_argmax).all(-1) if history is not None else torch.zeros(B, dtype=torch.bool)
                history = new_argmax
            confident = torch.distributions.Categorical(logits=processed).entropy().mean(-1) < g.confidence_threshold
            done = done | (stable & confident)
            sc, canvas, argmax = processed, new_canvas, new_argmax
            if done.all():
                break
        block = argmax.clone()
        block[finished] = model.fill_id
        is_eos = torch.isin(block, eos)
        ended = is_eos.any(-1) & ~finished
        after = (is_eos.cumsum(-1) > 0) & ~((is_eos.cumsum(-1) == 1) & is_eos)
        block[ended[:, None] & after] = model.fill_id
        out.append(block)
        finished |= ended
        if finished.all():
            break
        attention = torch.nn.functional.pad(attention, (0, L), value=True)
        enc_ids, enc_pos = block, dec_pos
    tokens = torch.cat(out, 1)
    tokens = torch.nn.functional.pad(tokens, (0, canvases * L - tokens.shape[1]), value=model.fill_id)
    return tokens, passes


@pytest.mark.parametrize("generation", [STOPPING, DEFAULTS], ids=["stopping", "defaults"])
def test_generate_is_pinned(dg, generation):
    """The facts we reproduce hold for the installed transformers: if this fails, generate()
    changed (draw order, acceptance, stop rule, end-of-text handling or pass counting)."""
    ids, mask = batch(dg, PROMPTS)
    theirs, passes = generate(dg, ids, mask, seed=3, canvases=4, generation=generation)
    ours, our_passes = reference(dg, ids, mask, seed=3, canvases=4, generation=generation)
    assert torch.equal(theirs, ours)
    assert torch.equal(passes, our_passes)


def ours(model, ids, mask, *, seed: int, canvases: int, strategy: str | None = None):
    return decode(model, ids, prompt_mask=mask, strategy=strategy or model.recommended_strategy,
                  gen_length=canvases * model.block_length, seed=seed)


@pytest.mark.parametrize(("prompts", "seed"), [(PROMPTS, 3), (PROMPTS[:1], 4)], ids=["batch4", "batch1"])
def test_recommended_strategy_reproduces_generate(dg, prompts, seed):
    """Seeded, our loop with the model's recommended strategy emits generate()'s tokens and
    charges each row generate's decoder passes, over four canvases, with prompts of different
    lengths, canvases that stop at different steps and a row whose text ends in its first
    canvas while the others go on (it keeps decoding in lockstep, as in generate)."""
    model = attrs.evolve(dg, generation=STOPPING)
    ids, mask = batch(model, prompts)
    theirs, passes = generate(model, ids, mask, seed=seed, canvases=4, generation=STOPPING)
    result = ours(model, ids, mask, seed=seed, canvases=4)
    assert torch.equal(result.tokens, theirs)
    assert torch.equal(result.nfe, passes)
    L, N = model.block_length, STOPPING.max_denoising_steps
    spent = (theirs != model.fill_id).any(0).view(4, L).any(1).sum()
    assert spent >= 3, "the run must cover at least three canvases"
    assert result.encoder_forwards == spent  # the prompt, then every finished canvas but the last
    assert bool((passes < N * spent).any()), "some canvas must stop before its step cap"
    if len(prompts) > 1:
        ends = [(row == model.fill_id).nonzero().min().item() // L if bool((row == model.fill_id).any()) else 4
                for row in theirs]
        assert min(ends) < max(ends), "rows must end in different canvases"


@pytest.mark.slow
def test_default_settings_reproduce_generate(dg):
    """transformers' defaults (stability 1: the argmax must repeat before a canvas stops)."""
    model = attrs.evolve(dg, generation=DEFAULTS)
    ids, mask = batch(model, PROMPTS)
    theirs, passes = generate(model, ids, mask, seed=5, canvases=3, generation=DEFAULTS)
    result = ours(model, ids, mask, seed=5, canvases=3)
    assert torch.equal(result.tokens, theirs)
    assert torch.equal(result.nfe, passes)


SWAPPED = ("temperature_schedule+multinomial+threshold(tau=0.5)+renoise+stable_stop(stability=0,confidence=0.6)"
           "+self_conditioning")


def test_a_swapped_acceptance_rule_keeps_the_uniform_process_promises():
    """threshold in place of the entropy bound: the kit's checks for the uniform process hold on
    the tiny DiffusionGemma (exact cache, lockstep, self-conditioning) and on uniform fake models."""
    check_strategy_property(SWAPPED, model=kit_diffusion_gemma(), max_examples=3)
    check_strategy_property("threshold(tau=0.5)+renoise+stable_stop(stability=0,confidence=0.6)", max_examples=6)


def test_processes_are_checked_when_parsed_and_when_decoding(dg):
    with pytest.raises(SpecError, match="renoise.*wino|wino.*renoise"):
        Strategy.parse("renoise+wino")
    ids, mask = batch(dg, PROMPTS[:1])
    with pytest.raises(ConfigError, match="'wino' cannot serve the uniform process"):
        decode(dg, ids, prompt_mask=mask, strategy="wino", gen_length=dg.block_length)
    with pytest.raises(ConfigError, match="'renoise' cannot serve the absorbing process"):
        decode(tiny_model(hidden_size=16, num_layers=1, num_heads=2), [[5, 6]], strategy="renoise", gen_length=4)
    with pytest.raises(ConfigError, match="blocks of 8 tokens; use block_length=8"):
        decode(dg, ids, prompt_mask=mask, gen_length=16, block_length=4)


def test_multinomial_samples_around_a_mask_the_model_is_sure_of():
    """An absorbing model all but certain of the mask token: every other probability rounds to 0
    in float32, yet the sampler draws from the rest (the mask's logit is removed, not its
    probability), and never the mask."""
    from dllm_strategies.testing.fakes import FakeModel

    def logits(ids):
        out = torch.zeros(*ids.shape, 24)
        out[..., 0] = 1000.0  # the mask
        out[..., 5] = 2.0
        return out

    result = decode(FakeModel(logits_fn=logits, vocab_size=24), [[2]], strategy="multinomial", gen_length=8, seed=1)
    assert (result.tokens != 0).all() and result.nfe.tolist() == [8]
