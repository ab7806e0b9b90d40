"""DiffusionGemma on transformers' own ``DiffusionGemmaForBlockDiffusion`` (no remote code).

DiffusionGemma is a block-autoregressive, *uniform-state* diffusion model: an encoder reads the
prompt and every finished canvas (block) into a KV cache; a decoder denoises one canvas of
``config.canvas_length`` tokens against that cache, bidirectionally inside the canvas.  A canvas
starts as uniformly random tokens (there is no mask token), and the decoder also reads the
previous step's logits (self-conditioning).

:class:`DiffusionGemma` is the adapter strategies see.  Its cache is exact: finished canvases
enter it once, through the encoder, exactly as ``model.generate()`` feeds them (same calls, same
masks, same position ids), and the decoder only reads it.  Two entry points:

* ``logits(canvas, cache=view, ...)``: one decoder pass over a canvas against a cache (what the
  decode loop calls; metered as a forward, NFE);
* ``encode(cache, ids, ...)``: one encoder pass that appends finished tokens to the cache
  (metered apart: encoder passes are not NFE).

``logits(sequence)`` without a cache is the uncached form any plugin may call: the encoder reads
everything but the last ``canvas_length`` tokens, the decoder scores those.

The generation config's defaults (``_get_default_generation_params`` of transformers 5.24:
48 denoising steps, temperatures 0.8 -> 0.4, entropy bound 0.1, stability 1, confidence 0.005)
become the model's recommended strategy (:func:`recommended_strategy`), each piece a plugin of
``dllm_block_diffusion``.

Layout facts the decode loop relies on (mirroring ``generate``): position ids are absolute
columns of the left-padded batch (padding counts, as ``generate`` counts it), shared by every
row; the placeholder id ``vocab_size`` marks positions of canvases not opened yet (never fed to
the model); positions cut after an end-of-text token hold the pad token.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import attrs
import torch

from dllm_strategies.blocks import BlockRun
from dllm_strategies.errors import ConfigError, ModelError
from dllm_strategies.models.families import DIFFUSION_GEMMA, Family
from dllm_strategies.models.tokenizer import END_OF_TURN, tiny_tokenizer
from dllm_strategies.state import DecodeState, Logits, Plan

FAMILY = DIFFUSION_GEMMA

# transformers' DiffusionGemmaGenerationConfig._get_default_generation_params (5.24), for the
# keys a checkpoint's generation_config.json leaves unset.
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_denoising_steps": 48, "entropy_bound": 0.1, "t_min": 0.4, "t_max": 0.8,
    "stability_threshold": 1, "confidence_threshold": 0.005,
}


@attrs.frozen
class Generation:
    """A checkpoint's denoising settings (its ``generation_config.json`` over transformers' defaults)."""

    max_denoising_steps: int = GENERATION_DEFAULTS["max_denoising_steps"]
    entropy_bound: float = GENERATION_DEFAULTS["entropy_bound"]
    t_min: float = GENERATION_DEFAULTS["t_min"]
    t_max: float = GENERATION_DEFAULTS["t_max"]
    stability_threshold: int = GENERATION_DEFAULTS["stability_threshold"]
    confidence_threshold: float = GENERATION_DEFAULTS["confidence_threshold"]

    @classmethod
    def read(cls, values: dict[str, Any]) -> Generation:
        sampler = values.get("sampler_config") or {}
        picked = {k: values[k] for k in GENERATION_DEFAULTS if values.get(k) is not None}
        if isinstance(sampler, dict) and sampler.get("entropy_bound") is not None:
            picked["entropy_bound"] = sampler["entropy_bound"]
        elif getattr(sampler, "entropy_bound", None) is not None:
            picked["entropy_bound"] = sampler.entropy_bound
        return cls(**picked)


def recommended_strategy(generation: Generation) -> str:
    """The strategy spec that reproduces ``model.generate()`` with these settings."""
    g = generation
    return (f"temperature_schedule(t_max={g.t_max!r},t_min={g.t_min!r})+multinomial"
            f"+entropy_bound(bound={g.entropy_bound!r})+renoise"
            f"+stable_stop(stability={g.stability_threshold},confidence={g.confidence_threshold!r})"
            "+self_conditioning")


@attrs.define(eq=False)
class CanvasCache:
    """The encoder's KV cache of a batch, as ``generate`` keeps it: a transformers
    ``DynamicCache`` (its sliding layers keep their last ``sliding_window - 1`` keys, as in
    ``generate``) and the 2-D mask of the slots it holds (False on left padding).

    ``rows`` of a view name the batch rows it holds (a decoder pass over some rows reads a view;
    only the whole batch is ever written, as ``generate`` writes it)."""

    dynamic: Any
    mask: torch.Tensor
    rows: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def view(self, rows: torch.Tensor | None) -> CanvasCache:
        """The cache of ``rows`` only (None or every row: the cache itself), for reading."""
        if rows is None or rows.numel() == self.mask.shape[0] and bool(
                (rows == torch.arange(rows.numel(), device=rows.device)).all()):
            return self
        sub = copy.copy(self.dynamic)
        sub.layers = []
        for layer in self.dynamic.layers:
            part = copy.copy(layer)
            if getattr(layer, "is_initialized", False):
                part.keys = layer.keys.index_select(0, rows)
                part.values = layer.values.index_select(0, rows)
            sub.layers.append(part)
        return CanvasCache(dynamic=sub, mask=self.mask.index_select(0, rows), rows=rows)


@attrs.define(eq=False)
class DiffusionGemma:
    """A ``DiffusionGemmaForBlockDiffusion`` with the facts the decode loop needs.

    Attributes:
        module: the transformers module.
        tokenizer: its tokenizer (or None).
        eot_ids: end-of-text ids (``generate``'s ``eos_token_id``): a finished canvas holding one
            ends its row.
        fill_id: the pad token written after an end-of-text token (``generate``'s pad).
        vocab_size: width of the logits (the text vocabulary).
        block_length: the canvas length (``config.canvas_length``).
        generation: the checkpoint's denoising settings.
        mask_id: ``vocab_size``, a placeholder for positions of canvases not opened yet (the
            model has no mask token and never sees it).
    """

    module: torch.nn.Module
    tokenizer: Any
    eot_ids: tuple[int, ...]
    fill_id: int
    vocab_size: int
    block_length: int
    generation: Generation = attrs.field(factory=Generation)
    max_positions: int | None = None
    name: str = ""
    family: Family = FAMILY
    # The decode loop's facts about this model (see dllm_strategies.blocks).
    process: str = "uniform"
    lockstep: bool = True
    block_fixed: bool = True  # the decoder denoises whole canvases
    runner: type = BlockRun

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def steps_per_block(self) -> int:
        return self.generation.max_denoising_steps

    @property
    def recommended_strategy(self) -> str:
        return recommended_strategy(self.generation)

    # ---- the encoder cache ---------------------------------------------------------------
    def exact_cache(self, state: DecodeState) -> ExactCanvasCache:
        """A run's exact cache (the core's forward for this model; ``self_conditioning`` uses it too)."""
        return ExactCanvasCache(batch_size=state.batch_size)

    def new_cache(self, batch_size: int) -> CanvasCache:
        from transformers.cache_utils import DynamicCache

        dynamic = DynamicCache(config=self.module.config.get_text_config(decoder=True))
        return CanvasCache(dynamic=dynamic, mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device))

    def encode(self, cache: CanvasCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: torch.Tensor) -> CanvasCache:
        """One encoder pass appending ``input_ids`` (B, n) to the cache of the whole batch.

        ``attention_mask`` (B, n): False on left padding; ``position_ids`` (1, n) or (B, n).
        The 4-D masks come from transformers' own ``create_masks_for_generate`` over the 2-D mask
        of everything cached so far, exactly as ``generate`` builds them."""
        if cache.rows is not None:
            raise ValueError("DiffusionGemma's encoder writes the cache of the whole batch, not a view of some rows")
        full = torch.cat([cache.mask, attention_mask.bool()], 1)
        encoder = self.module.model.encoder
        embeds = torch.empty((input_ids.shape[0], input_ids.shape[1], 0), dtype=self.dtype, device=input_ids.device)
        masks = encoder.create_masks_for_generate(
            config=self.module.config, inputs_embeds=embeds, attention_mask=full, cache=cache.dynamic,
            position_ids=position_ids, mm_token_type_ids=None)
        out = encoder(input_ids=input_ids.contiguous(), attention_mask=masks, cache=cache.dynamic,
                      position_ids=position_ids)
        return CanvasCache(dynamic=out.cache, mask=full)

    def decoder_masks(self, cache: CanvasCache, canvas_length: int) -> dict[str, torch.Tensor | None]:
        """The decoder's 4-D masks over ``cache`` plus a canvas, as ``generate`` builds them."""
        full = torch.nn.functional.pad(cache.mask, (0, canvas_length), value=True)
        dummy = torch.zeros(cache.mask.shape[0], canvas_length, 1, dtype=torch.long, device=cache.mask.device)
        return self.module.model.decoder.create_diffusion_decoder_attention_mask(
            config=self.module.config, inputs_embeds=dummy, cache=cache.dynamic, decoder_attention_mask=full)

    # ---- the model as the decode loop calls it -------------------------------------------
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, logits_to_keep: int = 0, *,
               cache: CanvasCache | None = None, decoder_masks: dict | None = None,
               self_conditioning_logits: torch.Tensor | None = None,
               self_conditioning_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Decoder logits (B, K, V) for the canvas, float32 and soft-capped as the module returns them.

        With ``cache``: ``input_ids`` is the canvas (B, L) and ``position_ids`` its positions;
        ``decoder_masks`` (optional) are the 4-D masks (from :meth:`decoder_masks`).  Without:
        ``input_ids`` (B, T) is context + canvas, the last ``canvas_length`` positions the canvas;
        the context is encoded into a fresh cache first (``attention_mask`` (B, T) marks padding)."""
        if kwargs:
            raise TypeError(f"DiffusionGemma.logits got unexpected arguments {sorted(kwargs)}; a 4-D attention "
                            "mask or a past_key_values cache (Fast-dLLM's approximate caches) does not apply to "
                            "its encoder-decoder layout")
        if cache is None:
            L = self.block_length
            if input_ids.shape[1] <= L:
                raise ConfigError(f"DiffusionGemma scores a canvas of {L} tokens after a context; got an input of "
                                  f"{input_ids.shape[1]} tokens (give the prompt and a whole canvas)")
            if attention_mask is not None and attention_mask.dim() != 2:
                raise ConfigError("DiffusionGemma takes a 2-D attention mask (False on left padding)")
            mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            T = input_ids.shape[1]
            positions = torch.arange(T, device=input_ids.device)[None]
            cache = self.encode(self.new_cache(input_ids.shape[0]), input_ids[:, :T - L], mask[:, :T - L],
                                positions[:, :T - L])
            position_ids, input_ids = positions[:, T - L:], input_ids[:, T - L:]
        if decoder_masks is None:
            decoder_masks = self.decoder_masks(cache, input_ids.shape[1])
        out = self.module(decoder_input_ids=input_ids, cache=cache.dynamic, decoder_attention_mask=decoder_masks,
                          decoder_position_ids=position_ids, self_conditioning_logits=self_conditioning_logits,
                          self_conditioning_mask=self_conditioning_mask).logits
        return out[:, -logits_to_keep:] if logits_to_keep else out


@attrs.define(eq=False)
class ExactCanvasCache:
    """One run's encoder cache, filled as ``generate`` fills it: the prompt (one encoder pass),
    then each canvas once it is decided, in lockstep (every row of the batch in one pass, a row
    whose text is over with its pad).  A step's decoder pass reads it for the stepping rows.

    Attributes:
        batch_size: rows of the run.
        cache: the :class:`CanvasCache` of every row (None before the first step).
        encoded: response columns in it (the same for every row).
        masks: the decoder's 4-D masks of every row for the current canvas.
        positions: (1, L) the current canvas's position ids.
    """

    batch_size: int
    cache: CanvasCache | None = None
    encoded: int = 0
    masks: dict | None = None
    positions: torch.Tensor | None = None
    # the last view read (rows, cache view, masks): rows that stop one by one keep reading the same subset
    read: tuple | None = None

    def logits(self, model: Any, state: DecodeState, plan: Plan, **inputs: Any) -> Logits:
        """Encoder passes for what was decided since the last step, then one decoder pass over
        the canvas holding each row's window.  ``inputs`` go to the decoder (self-conditioning)."""
        L = model.block_length
        canvases = {start // L for start in plan.window_start.tolist()}  # one sync for a few rows
        if len(canvases) > 1:
            raise ConfigError("DiffusionGemma decodes the rows of a batch in lockstep (one canvas at a time, as "
                              "generate does); a schedule gave rows windows in different canvases")
        start = canvases.pop() * L
        P = state.prompt.shape[1]
        if self.cache is None or self.encoded < start:
            if state.batch_size != self.batch_size:
                raise ConfigError("DiffusionGemma's encoder writes every row of the batch at once; a step at a "
                                  "canvas boundary must hold every row (the block loop's lockstep)")
            if self.cache is None:
                positions = torch.arange(P, device=state.device)[None]
                self.cache = model.encode(model.new_cache(self.batch_size), state.prompt, state.prompt_mask, positions)
            while self.encoded < start:  # one pass per canvas, as generate encodes them
                stop = self.encoded + L
                positions = torch.arange(P + self.encoded, P + stop, device=state.device)[None]
                block = state.response[:, self.encoded:stop]
                self.cache = model.encode(self.cache, block, torch.ones_like(block, dtype=torch.bool), positions)
                self.encoded = stop
            self.masks, self.read = None, None
        if self.masks is None:  # a new canvas: its masks and positions serve every step of it
            self.masks = model.decoder_masks(self.cache, L)
            self.positions = torch.arange(P + start, P + start + L, device=state.device)[None]
        whole = state.batch_size == self.batch_size
        rows = None if whole else state.rows
        if whole:
            view, masks = self.cache, self.masks
        elif self.read is not None and torch.equal(self.read[0], rows):
            view, masks = self.read[1], self.read[2]
        else:
            view = self.cache.view(rows)
            masks = {k: (v if v is None else v.index_select(0, rows)) for k, v in self.masks.items()}
            self.read = (rows, view, masks)
        canvas = state.response[:, start:start + L]
        values = model.logits(canvas, position_ids=self.positions, cache=view, decoder_masks=masks, **inputs)
        return Logits(values=values, start=start)


# ------------------------------------------------------------------------------------------
# Loading and building
# ------------------------------------------------------------------------------------------
def load(directory: Path, config: dict[str, Any], tokenizer: Any, *, dtype: torch.dtype, device: torch.device,
         name: str) -> DiffusionGemma:
    """A checkpoint directory onto ``DiffusionGemmaForBlockDiffusion`` (transformers' own class)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    try:
        module = DiffusionGemmaForBlockDiffusion.from_pretrained(str(directory), dtype=dtype)
    except Exception as exc:
        raise ModelError(f"{name}: transformers could not load it as DiffusionGemmaForBlockDiffusion: "
                         f"{type(exc).__name__}: {exc}") from exc
    module = module.to(device).eval()
    values = {}
    generation_file = directory / "generation_config.json"
    if generation_file.is_file():
        values = json.loads(generation_file.read_text())
    return wrap(module, tokenizer, generation=Generation.read(values), name=name,
                eos=values.get("eos_token_id"), pad=values.get("pad_token_id"))


def wrap(module: torch.nn.Module, tokenizer: Any = None, *, generation: Generation | None = None, name: str = "",
         eos: int | list[int] | None = None, pad: int | None = None) -> DiffusionGemma:
    """The adapter for a module in memory; end-of-text and pad ids from ``eos``/``pad``, else the
    text config's."""
    text = module.config.get_text_config()
    eos = eos if eos is not None else text.eos_token_id
    eot_ids = tuple(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []))
    pad = pad if pad is not None else text.pad_token_id
    if pad is None:
        raise ModelError(f"{name or 'DiffusionGemma'}: no pad token in its config; generate writes pad after an "
                         "end-of-text token, so one is needed")
    return DiffusionGemma(
        module=module.eval(), tokenizer=tokenizer, eot_ids=eot_ids, fill_id=int(pad), vocab_size=int(text.vocab_size),
        block_length=int(module.config.canvas_length), generation=generation or Generation(),
        max_positions=int(text.max_position_embeddings) if text.max_position_embeddings else None, name=name)


# The tiny model's pad: the character tokenizer's token 0, which DiffusionGemma never uses.
PAD = 0


def tiny_diffusion_gemma(*, canvas_length: int = 8, hidden_size: int = 32, num_layers: int = 2,
                         sliding_window: int = 16, sharpness: float = 1.0, seed: int = 0,
                         dtype: torch.dtype = torch.float32, generation: Generation | None = None,
                         tokenizer: Any = None) -> DiffusionGemma:
    """A randomly initialised DiffusionGemma built from a config (nothing is downloaded), with
    the tiny character tokenizer: end-of-text and end-of-turn end a row, and its token 0 (a mask
    token DiffusionGemma never uses) is the pad ``generate`` writes after them, so a pad is never
    mistaken for an end-of-text token.  Layers alternate sliding and
    full attention (the last is full), with two experts per layer, as the real model's shape.
    ``sharpness`` scales the tied embedding and head, making the random model's logits peaked
    (so denoising stops early and accepts several tokens at once, as a trained model does)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion


    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    vocab = len(tokenizer)
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    heads = 2
    text = dict(
        vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=heads, num_key_value_heads=1, head_dim=hidden_size // heads,
        global_head_dim=hidden_size // heads, sliding_window=sliding_window,
        layer_types=["full_attention" if i == num_layers - 1 or (i + 1) % 2 == 0 else "sliding_attention"
                     for i in range(num_layers)],
        num_experts=2, top_k_experts=1, moe_intermediate_size=hidden_size, max_position_embeddings=4096,
        pad_token_id=PAD, eos_token_id=eos, bos_token_id=None,
    )
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    # Image ids outside the text vocabulary: no text prompt ever holds them.
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                  image_token_id=vocab + 2, boi_token_id=vocab + 1, eoi_token_id=vocab + 3)
    torch.manual_seed(seed)
    module = DiffusionGemmaForBlockDiffusion(config).to(dtype=dtype).eval()
    if sharpness != 1.0:
        with torch.no_grad():
            module.model.decoder.embed_tokens.weight.mul_(sharpness)
    return wrap(module, tokenizer, generation=generation, name=f"tiny-diffusion-gemma-{hidden_size}x{num_layers}",
                eos=eos, pad=PAD)
