"""Masked block-diffusion models on transformers' own classes, with the block-causal mask and an
exact cache: SDAR (``model_type: "sdar"``, a Qwen3), Fast-dLLM v2 (``"Fast_dLLM_Qwen"``, a
Qwen2.5 whose logits are shifted by one position, as Dream's) and any model built the same way.

Attention (the authors' modelling code, github.com/JetAstra/SDAR ``modeling_sdar.py`` and
``generate.py``; the Fast-dLLM v2 hub ``modeling.py``, ``eval_block_diff_mask``): a position
attends to every position of its own block and of earlier blocks, never to a later block.
Blocks are ``block_length`` positions counted from each row's first token, prompt included, so
a prompt that does not fill its last block shares it with the first response tokens (the first
response block of such a row is short).  With left padding, positions (and blocks) are counted
per row from its first real token; padding is never attended.

The exact cache (:class:`ColumnCache`) keeps, per row and per layer, the keys and values of
every position before the row's open block: they are written once, by a forward over the newly
finished blocks (a *cache write*, counted as an encoder pass, as SDAR's ``store_kv`` forward
is), and only read afterwards.  Because a block never attends to a later one, a finished
block's keys and values are final: the cached logits equal the uncached block-causal forward's
at every step (tested), with no refresh and no approximation.  Rows of a batch may be in
different blocks: each reads its own cache.

Loading: the checkpoint's ``config.json`` becomes a ``Qwen3Config`` / ``Qwen2Config`` and its
safetensors load under transformers' names (which SDAR's and Fast-dLLM v2's already are); no
remote code runs.  The block length is ``bd_size`` (Fast-dLLM v2) or ``block_size``; SDAR's
config does not carry it, and the released chat models are used with blocks of 4 (its
``generate.py`` default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from transformers.cache_utils import DynamicCache

from dllm_strategies.blocks import BlockRun
from dllm_strategies.errors import ConfigError, ModelError
from dllm_strategies.models import native
from dllm_strategies.models.families import FAST_DLLM_V2, SDAR, Family
from dllm_strategies.models.tokenizer import END_OF_TURN, tiny_tokenizer
from dllm_strategies.state import DecodeState, Logits, Plan

# SDAR's generate.py default block length (its config does not carry one).
SDAR_BLOCK_LENGTH = 4


def positions_of(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids of a left-padded sequence: counted from each row's first real token."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def block_causal_mask(q_pos: torch.Tensor, q_valid: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor,
                      block_length: int) -> torch.Tensor:
    """(B, 1, Q, K) bool: query i attends key j iff j is real and its block is not after i's.
    A padding query attends only to itself (when it is also among the keys), so no row of
    attention is empty (an empty row would fill its output with NaN)."""
    q_block = torch.div(q_pos, block_length, rounding_mode="floor")[:, :, None]
    k_block = torch.div(k_pos, block_length, rounding_mode="floor")[:, None, :]
    mask = (k_block <= q_block) & k_valid[:, None, :] & q_valid[:, :, None]
    return mask[:, None]


@attrs.define(eq=False)
class BlockCausal:
    """A masked block-diffusion model (see the module docstring) with the facts the decode loop
    needs.  ``logits(ids, attention_mask)`` is the uncached block-causal forward over a whole
    sequence; ``exact_cache(state)`` is the cache the loop's default forward uses."""

    module: torch.nn.Module
    tokenizer: Any
    family: Family
    mask_id: int
    eot_ids: tuple[int, ...]
    fill_id: int
    vocab_size: int
    block_length: int
    max_positions: int | None = None
    name: str = ""
    process: str = "absorbing"
    lockstep: bool = False
    aligned_blocks: bool = True
    runner: type = BlockRun

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def shifted(self) -> bool:
        return self.family.shifted

    @property
    def recommended_strategy(self) -> str:
        """The authors' decoding: SDAR's ``generate.py`` defaults (dynamic confidence 0.85,
        sampling at temperature 1), Fast-dLLM v2's (sub-blocks of 8, threshold 0.9, greedy)."""
        if self.family.name == FAST_DLLM_V2.name:
            return "sub_blocks(size=8)+threshold(tau=0.9)"
        return "confidence_dynamic(tau=0.85)+multinomial"

    def exact_cache(self, state: DecodeState) -> ColumnCache:
        return ColumnCache(batch_size=state.batch_size, block_length=self.block_length, shifted=self.shifted)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                cache: Any = None) -> torch.Tensor:
        """The module's logits (B, T, V) under a prepared 4-D bool mask (True: attend)."""
        return self.module(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                           use_cache=cache is not None).logits

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
               context: Context) -> torch.Tensor:
        """A cache write: the forward over finished positions that appends their keys and values
        to ``context`` (the raw, unshifted logits are returned: the last one scores the next
        position of a shifted model)."""
        return self.forward(input_ids, attention_mask, position_ids, context.dynamic)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, logits_to_keep: int = 0, *,
               context: Context | None = None, **kwargs: Any) -> torch.Tensor:
        """Logits (B, K, V).

        Without ``context``: the uncached block-causal forward over ``input_ids`` (B, T)
        (``attention_mask`` (B, T): False on padding and cut positions), aligned so that position
        i scores token i.  With ``context`` (a :class:`Context` from the exact cache): the raw
        logits of a forward over new positions that reads the cached keys and values
        (``attention_mask`` is then the prepared 4-D mask; the cache re-aligns a shifted model)."""
        if kwargs:
            raise ConfigError(f"model {self.name or 'block-causal'} got unexpected arguments {sorted(kwargs)}: its "
                              "attention is block-causal and its cache exact; Fast-dLLM's approximate caches "
                              "(prefix_cache, dual_cache) and 4-D masks of other plugins do not apply to it")
        if context is not None:
            out = self.forward(input_ids, attention_mask, position_ids, context.dynamic)
            return out[:, -logits_to_keep:] if logits_to_keep else out
        if attention_mask is not None and attention_mask.dim() == 4:
            # A plugin's own 4-D mask (WINO's shadow block) over explicit positions: the block rule
            # still holds, so the two are intersected (positions decide the blocks).
            if position_ids is None:
                raise ConfigError("a 4-D attention mask for a block-causal model needs explicit position_ids")
            allowed = attention_mask if attention_mask.dtype == torch.bool else \
                attention_mask > torch.finfo(attention_mask.dtype).min / 2
            everything = torch.ones_like(input_ids, dtype=torch.bool)
            mask = allowed & block_causal_mask(position_ids, everything, position_ids, everything, self.block_length)
            positions = position_ids
        else:
            valid = attention_mask.bool() if attention_mask is not None else \
                torch.ones_like(input_ids, dtype=torch.bool)
            positions = positions_of(valid)
            mask = block_causal_mask(positions, valid, positions, valid, self.block_length)
        out = self.forward(input_ids, mask, positions)
        if self.shifted:  # position i's prediction is the output at i - 1 (the first keeps its own)
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out[:, -logits_to_keep:] if logits_to_keep else out


@attrs.define(eq=False)
class Context:
    """The cached keys and values a forward reads: a transformers ``DynamicCache`` holding them."""

    dynamic: Any


def _dynamic(keys: list[torch.Tensor], values: list[torch.Tensor]) -> Any:
    """A ``DynamicCache`` holding these keys and values (empty lists: an empty cache, which a
    forward fills with its own)."""
    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k, v, layer)
    return cache


@attrs.define(eq=False)
class ColumnCache:
    """One run's exact cache of a block-causal model: per layer, keys and values of every
    position of the sequence (prompt columns, then response columns), written once when the
    block holding them is finished (see the module docstring).

    Attributes:
        batch_size / block_length: the run's rows and the model's block.
        shifted: the model's logits are shifted (Fast-dLLM v2): a block's first position is
            scored by the last output of the block before it, kept from its cache write.
        keys / values: per layer (B, heads, T, head_dim), allocated at the first write.
        written: (B,) per row, the sequence slots [0, written) in the cache.
        carry: (B, V) per row, the output at slot ``written - 1`` (shifted models).
    """

    batch_size: int
    block_length: int
    shifted: bool = False
    keys: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    written: torch.Tensor | None = None
    carry: torch.Tensor | None = None

    def logits(self, model: Any, state: DecodeState, plan: Plan, **inputs: Any) -> Logits:
        """Write the blocks each row finished since its last step, then one forward over each
        row's open block (the block holding its window; see below), reading the cache."""
        if inputs:
            raise ConfigError(f"a block-causal model's forward takes no extra inputs, got {sorted(inputs)}")
        P, G, L = state.prompt.shape[1], state.config.gen_length, self.block_length
        rows = state.rows
        seq = torch.cat([state.prompt, state.response], 1)
        valid = torch.cat([state.prompt_mask, state.live], 1)
        positions = positions_of(valid)
        # The open blocks, sequence slots [lo, hi): from the block of the first undecided position
        # (or of the window start, if earlier) to the block of the window's last column.  Usually
        # one block; a schedule whose windows are not the model's blocks may straddle two, which
        # are then fed together (block-causal among themselves), as the uncached forward sees them.
        masked = state.masked
        undecided = torch.where(masked.any(1), masked.int().argmax(1), plan.window_start)
        first = P + torch.minimum(undecided, plan.window_start)
        last = P + (plan.window_end - 1).clamp(min=0)
        slot_block = torch.div(positions, L, rounding_mode="floor")
        from_block = slot_block.gather(1, first[:, None])
        to_block = slot_block.gather(1, last[:, None])
        inside = (slot_block >= from_block) & (slot_block <= to_block) & valid
        lo = torch.where(inside.any(1), inside.int().argmax(1), first)
        hi = lo + inside.sum(1)
        if self.written is None:
            self.written = torch.zeros(self.batch_size, dtype=torch.long, device=state.device)
        written = self.written.index_select(0, rows)
        start = torch.maximum(written, (~state.prompt_mask).sum(1))  # padding needs no keys
        behind = start < lo
        if bool(behind.any()):
            self._write(model, state, seq, valid, positions, behind.nonzero().squeeze(1), start, lo)
        return self._read(model, state, seq, valid, positions, lo, hi, P, G)

    # ---- writing finished blocks -------------------------------------------------------------
    def _write(self, model: Any, state: DecodeState, seq: torch.Tensor, valid: torch.Tensor,
               positions: torch.Tensor, which: torch.Tensor, start: torch.Tensor, stop: torch.Tensor) -> None:
        """One forward (an encoder pass) over slots [start, stop) of rows ``which`` (positions
        in the step), reading their cache, writing the new keys and values into it."""
        start, stop = start.index_select(0, which), stop.index_select(0, which)
        n = int((stop - start).max())
        offsets = torch.arange(n, device=seq.device)[None, :]
        slots = (start[:, None] + offsets).clamp(max=seq.shape[1] - 1)
        real = offsets < (stop - start)[:, None]
        ids = seq.index_select(0, which).gather(1, slots)
        pos = positions.index_select(0, which).gather(1, slots)
        context, ctx_pos, ctx_valid = self._context(state.rows.index_select(0, which), positions.index_select(0, which),
                                                    valid.index_select(0, which), int(start.max()), start)
        mask = torch.cat([
            block_causal_mask(pos, real, ctx_pos, ctx_valid, self.block_length),
            block_causal_mask(pos, real, pos, real, self.block_length) | torch.diag_embed(~real)[:, None],
        ], -1)
        out = model.encode(ids, mask, pos, context=context)
        T = ctx_pos.shape[1]
        self._store(state.rows.index_select(0, which), context.dynamic, T, start, real, seq.shape[1])
        if self.shifted:  # the last written position's output scores the next block's first position
            last = (stop - start - 1)[:, None, None].expand(-1, 1, out.shape[-1])
            carry = out.gather(1, last).squeeze(1)
            if self.carry is None:
                self.carry = carry.new_zeros(self.batch_size, carry.shape[-1])
            self.carry[state.rows.index_select(0, which)] = carry
        self.written[state.rows.index_select(0, which)] = stop

    def _context(self, batch_rows: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, width: int,
                 upto: torch.Tensor) -> tuple[Context, torch.Tensor, torch.Tensor]:
        """The cached keys and values of slots [0, width) for ``batch_rows``, with their positions
        and whether each is real and written (slots at or past ``upto`` are not read)."""
        if self.keys is None:
            width = 0  # nothing written yet: whatever precedes the first write is padding
        cols = torch.arange(width, device=positions.device)[None, :]
        ctx_valid = valid[:, :width] & (cols < upto[:, None])
        if self.keys is None or width == 0:
            keys, values = [], []
        else:
            keys = [k.index_select(0, batch_rows)[:, :, :width] for k in self.keys]
            values = [v.index_select(0, batch_rows)[:, :, :width] for v in self.values]
        return Context(dynamic=_dynamic(keys, values)), positions[:, :width], ctx_valid

    def _store(self, batch_rows: torch.Tensor, dynamic: Any, T: int, start: torch.Tensor, real: torch.Tensor,
               total: int) -> None:
        layers, device = dynamic.layers, start.device
        if self.keys is None:
            self.keys = [layer.keys.new_zeros(self.batch_size, layer.keys.shape[1], total, layer.keys.shape[3])
                         for layer in layers]
            self.values = [layer.values.new_zeros(self.batch_size, layer.values.shape[1], total, layer.values.shape[3])
                           for layer in layers]
        n = real.shape[1]
        slots = (start[:, None] + torch.arange(n, device=device)[None, :]).clamp(max=self.keys[0].shape[2] - 1)
        r = batch_rows[:, None].expand(-1, n)
        keep = real
        for store_k, store_v, layer in zip(self.keys, self.values, layers, strict=True):
            new_k = layer.keys[:, :, T:T + n].permute(0, 2, 1, 3)  # (rows, n, heads, dim)
            new_v = layer.values[:, :, T:T + n].permute(0, 2, 1, 3)
            view_k = store_k.permute(0, 2, 1, 3)  # (B, T, heads, dim), a view of the store
            view_v = store_v.permute(0, 2, 1, 3)
            view_k[r[keep], slots[keep]] = new_k[keep]
            view_v[r[keep], slots[keep]] = new_v[keep]

    # ---- reading: the open blocks ------------------------------------------------------------
    def _read(self, model: Any, state: DecodeState, seq: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor,
              lo: torch.Tensor, hi: torch.Tensor, P: int, G: int) -> Logits:
        W = int((hi - lo).max())
        offsets = torch.arange(W, device=seq.device)[None, :]
        real = offsets < (hi - lo)[:, None]
        slots = (lo[:, None] + offsets).clamp(max=seq.shape[1] - 1)
        ids = seq.gather(1, slots)
        pos = positions.gather(1, slots)
        context, ctx_pos, ctx_valid = self._context(state.rows, positions, valid, int(lo.max()), lo)
        mask = torch.cat([
            block_causal_mask(pos, real, ctx_pos, ctx_valid, self.block_length),
            block_causal_mask(pos, real, pos, real, self.block_length) | torch.diag_embed(~real)[:, None],
        ], -1)
        out = model.logits(ids, attention_mask=mask, position_ids=pos, context=context)
        if self.shifted:
            previous = out.new_zeros(out.shape[0], 1, out.shape[2])
            if self.carry is not None:
                previous = self.carry.index_select(0, state.rows)[:, None]
            # the block's first position is scored by the previous block's last output
            own_first = lo < P  # a block starting in the prompt: its first response column follows a prompt slot
            first_out = torch.where(own_first[:, None, None], out[:, :1], previous)
            out = torch.cat([first_out, out[:, :-1]], 1)
        # response columns [lo - P, hi - P) per row: place them on the union of the rows' spans
        col_lo, col_hi = (lo - P).clamp(min=0), hi - P
        start, stop = int(col_lo.min()), int(col_hi.max())
        span = torch.arange(start, stop, device=seq.device)[None, :]
        index = (span - (lo - P)[:, None]).clamp(0, W - 1)
        values = out.gather(1, index[..., None].expand(-1, -1, out.shape[-1]))
        cover = (span >= col_lo[:, None]) & (span < col_hi[:, None])
        return Logits(values=values, start=start, cover=None if bool(cover.all()) else cover)


# ------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------
def tiny_block_causal(*, block_length: int = 4, hidden_size: int = 32, num_layers: int = 2, shifted: bool = False,
                      seed: int = 0, dtype: torch.dtype = torch.float32, tokenizer: Any = None) -> BlockCausal:
    """A randomly initialised block-causal masked model built from a config (nothing is
    downloaded): SDAR's architecture (a Qwen3), or with ``shifted`` Fast-dLLM v2's (a Qwen2 whose
    logits are shifted by one position), with the tiny character tokenizer (its mask,
    end-of-text and end-of-turn tokens)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM


    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    eot_ids = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN))
    shape = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                 num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                 max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                 eos_token_id=list(eot_ids), bos_token_id=None)
    torch.manual_seed(seed)
    if shifted:
        module, family = Qwen2ForCausalLM(Qwen2Config(**shape)), FAST_DLLM_V2
    else:
        module, family = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden_size // 2, **shape)), SDAR
    family = attrs.evolve(family, mask_id=None, eot_ids=(), fill_id=None)  # the tokenizer's ids instead
    return BlockCausal(module=module.to(dtype=dtype).eval(), tokenizer=tokenizer, family=family,
                       mask_id=tokenizer.mask_token_id, eot_ids=eot_ids, fill_id=tokenizer.eos_token_id,
                       vocab_size=len(tokenizer), block_length=block_length, max_positions=2048,
                       name=f"tiny-{family.name}-{hidden_size}x{num_layers}")


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
_KEPT = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
         "attention_dropout", "pad_token_id", "bos_token_id", "eos_token_id")


def hf_config(config: dict[str, Any], family: Family, *, dtype: torch.dtype):
    """The ``Qwen3Config`` (SDAR) or ``Qwen2Config`` (Fast-dLLM v2) of a checkpoint's ``config.json``.

    Raises:
        ModelError: an option the transformers class cannot express (sliding windows, experts)."""
    from transformers import Qwen2Config, Qwen3Config

    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config.get(key), int):
            raise ModelError(f"{family.name} config {key}={config.get(key)!r}: expected an integer")
    for key in ("use_sliding_window", "use_mrope", "mlp_bias"):
        if config.get(key):
            raise ModelError(f"{family.name} config {key}={config[key]!r} is not supported natively")
    experts = [k for k, v in config.items() if "expert" in k.lower() and v not in (None, 0, 1, False)]
    if experts:
        raise ModelError(f"{family.name} config has mixture-of-experts settings ({', '.join(experts)}); "
                         "only dense models load natively")
    kept = {k: config[k] for k in _KEPT if config.get(k) is not None}
    pad = kept.get("pad_token_id")
    if not (isinstance(pad, int) and 0 <= pad < config["vocab_size"]):
        kept.pop("pad_token_id", None)
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope = {k: v for k, v in scaling.items() if k != "type"} if isinstance(scaling, dict) else {}
    rope["rope_type"] = (scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None) \
        or "default"
    rope.setdefault("rope_theta", float(config.get("rope_theta", 1e6 if family.native == "qwen3" else 1e4)))
    layers = config["num_hidden_layers"]
    common = dict(kept, rope_parameters=rope, layer_types=["full_attention"] * layers, use_sliding_window=False,
                  sliding_window=None, use_cache=False, dtype=dtype)
    if family.native == "qwen3":
        heads = config["num_attention_heads"]
        return Qwen3Config(head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                           attention_bias=bool(config.get("attention_bias", False)), **common)
    return Qwen2Config(**common)


def block_length_of(config: dict[str, Any], family: Family) -> int:
    """The model's block: ``bd_size`` (Fast-dLLM v2), ``block_size`` / ``block_length``, else SDAR's 4."""
    for key in ("bd_size", "block_size", "block_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    if family is SDAR:
        return SDAR_BLOCK_LENGTH
    raise ModelError(f"{family.name} config gives no block size (bd_size / block_size); pass one in config.json")


def load(directory: Path, config: dict[str, Any], family: Family, *, dtype: torch.dtype, device: torch.device,
         name: str, mask_id: int | None = None) -> BlockCausal:
    """A block-causal checkpoint onto transformers' own Qwen3 / Qwen2 class (no remote code)."""
    from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM


    directory = Path(directory)
    cfg = hf_config(config, family, dtype=dtype)
    with torch.device("meta"):
        module = (Qwen3ForCausalLM if family.native == "qwen3" else Qwen2ForCausalLM)(cfg)
    native.load_weights(module, directory, dtype=dtype, device=device, tied=bool(cfg.tie_word_embeddings),
                        label=f"{family.name} ({directory.name})")
    module.requires_grad_(False)
    tokenizer = native.load_tokenizer(directory, family)
    vocab = int(module.get_output_embeddings().weight.shape[0])
    candidates = (mask_id, config.get("mask_token_id"), tokenizer.mask_token_id, family.mask_id)
    mask = next((m for m in candidates if m is not None), None)
    if mask is None:
        raise ModelError(f"{name}: no mask token: neither config.json 'mask_token_id' nor the tokenizer defines one; "
                         "pass mask_id=...")
    eos = config.get("eos_token_id")
    eos = list(eos) if isinstance(eos, list) else ([eos] if eos is not None else [])
    eot_ids = tuple(dict.fromkeys(i for i in (*eos, *family.eot_ids, tokenizer.eos_token_id)
                                  if isinstance(i, int) and 0 <= i < vocab))
    if not eot_ids:
        raise ModelError(f"{name}: no end-of-text token in config ('eos_token_id') or tokenizer")
    fill = family.fill_id if family.fill_id in eot_ids else eot_ids[0]
    return BlockCausal(module=module.eval(), tokenizer=tokenizer, family=family, mask_id=int(mask), eot_ids=eot_ids,
                       fill_id=int(fill), vocab_size=vocab, block_length=block_length_of(config, family),
                       max_positions=int(config.get("max_position_embeddings") or 0) or None, name=name)
