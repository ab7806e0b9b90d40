"""Native LLaDA / Dream loading (``dllm_strategies.models.native``) on tiny checkpoints.

The checkpoints are written here in the hubs' layouts: LLaDA's ``config.json`` keys and
``model.transformer.*`` tensor names, sharded with ``model.safetensors.index.json`` and a
``tokenizer.json`` tokenizer; Dream's Qwen2 names, ``vocab.json``/``merges.txt`` tokenizer.
Both configs carry ``auto_map`` entries pointing at remote code that does not exist here: it
must never be imported.  LLaDA's logits are checked against an independent plain-torch
forward of the authors' architecture operating on the original tensor names.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_strategies.errors import ModelError
from dllm_strategies.models import families, loading, native

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- tiny LLaDA

# LLaDA-8B-Instruct's config.json (GSAI-ML/LLaDA-8B-Instruct) with tiny sizes and ids.
LLADA_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
    "d_model": 32, "embedding_dropout": 0.0,
    "embedding_size": 72,  # padded beyond vocab_size, as LLaDA allows
    "eos_token_id": 61, "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
    "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
    "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "mask_token_id": 60, "max_sequence_length": 64, "mlp_hidden_size": 48, "mlp_ratio": 4,
    "model_type": "llada", "multi_query_attention": None,
    "n_heads": 4, "n_kv_heads": 2,  # grouped-query, to pin the kv-head order
    "n_layers": 2, "pad_token_id": 61, "precision": "amp_bf16", "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
    "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
    "vocab_size": 64, "weight_tying": False,
}
LLADA_SPECIALS = {"<|start_header_id|>": 56, "<|end_header_id|>": 57, "<|startoftext|>": 58,
                  "<|eot_id|>": 59, "<|mdm_mask|>": 60, "<|endoftext|>": 61, "<role>": 62, "</role>": 63}
LLADA_TEMPLATE = (  # GSAI-ML/LLaDA-8B-Instruct's chat template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)


def llada_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA's own tensor names (``modeling_llada.LLaDALlamaBlock``)."""
    gen = torch.Generator().manual_seed(seed)
    d, heads, kv = config["d_model"], config["n_heads"], config["n_kv_heads"]
    hd, hidden, rows = d // heads, config["mlp_hidden_size"], config["embedding_size"]

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    w = {"model.transformer.wte.weight": rand(rows, d, scale=1.0),
         "model.transformer.ln_f.weight": 1 + rand(d, scale=0.1),
         "model.transformer.ff_out.weight": rand(rows, d)}
    for i in range(config["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        w |= {p + "attn_norm.weight": 1 + rand(d, scale=0.1), p + "ff_norm.weight": 1 + rand(d, scale=0.1),
              p + "q_proj.weight": rand(d, d), p + "k_proj.weight": rand(kv * hd, d),
              p + "v_proj.weight": rand(kv * hd, d), p + "attn_out.weight": rand(d, d),
              p + "ff_proj.weight": rand(hidden, d), p + "up_proj.weight": rand(hidden, d),
              p + "ff_out.weight": rand(d, hidden)}
    return w


def save_sharded(directory: Path, weights: dict[str, torch.Tensor], shards: int,
                 dtype: torch.dtype = torch.bfloat16) -> None:
    """``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``, as the hub has."""
    names = sorted(weights)
    weight_map, total = {}, 0
    for k in range(shards):
        file_name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n].to(dtype).contiguous() for n in names[k::shards]}
        save_file(part, str(directory / file_name), metadata={"format": "pt"})
        weight_map |= {n: file_name for n in part}
        total += sum(t.numel() * t.element_size() for t in part.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def word_tokenizer(directory: Path, size: int, specials: dict[str, int], config: dict) -> None:
    """A WordLevel ``tokenizer.json`` of ``size`` ids (words, then specials at their ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "hello", "world", "user", "assistant",
             "system", "yes", "no", "1", "2", "3", "+", "=", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(words)}
    filler = (f"w{i}" for i in range(size))
    by_id = {i: tok for tok, i in specials.items()}
    for i in range(len(words), size):
        vocab[by_id.get(i) or next(filler)] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(specials))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_llada(directory: Path, config: dict | None = None, shards: int = 3, seed: int = 0) -> Path:
    config = dict(config or LLADA_CONFIG)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 58, "eos_token_id": 61}))
    save_sharded(directory, llada_weights(config, seed), shards, dtype=torch.float32)
    word_tokenizer(directory, config["vocab_size"], LLADA_SPECIALS, {
        "add_bos_token": False, "add_eos_token": False, "additional_special_tokens": ["<role>", "</role>"],
        "bos_token": "<|startoftext|>", "chat_template": LLADA_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "fast_tokenizer": True, "model_input_names": ["input_ids", "attention_mask"],
        "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast", "trust_remote_code": True,
    })
    (directory / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<role>", "</role>"]}))
    return directory


# ----------------------------------------------------------------------------- tiny Dream

# Dream-org/Dream-v0-Instruct-7B's config.json with tiny sizes and ids.
DREAM_CONFIG = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 259, "eos_token_id": 256, "hidden_act": "silu", "hidden_size": 32,
    "initializer_range": 0.02, "intermediate_size": 64, "mask_token_id": 260,
    "max_position_embeddings": 128, "max_window_layers": 28, "model_type": "Dream",
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": 256,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
    "use_cache": True, "use_mrope": False, "use_sliding_window": False, "vocab_size": 264,
}
DREAM_SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|beginoftext|>": 259,
                  "<|mask|>": 260}
DREAM_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                  "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                  "{% endif %}")


def dream_weights(config: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    d, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd, hidden, rows = d // heads, config["intermediate_size"], config["vocab_size"]

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    w = {"model.embed_tokens.weight": rand(rows, d, scale=1.0), "model.norm.weight": 1 + rand(d, scale=0.1)}
    if not config.get("tie_word_embeddings"):
        w["lm_head.weight"] = rand(rows, d)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": 1 + rand(d, scale=0.1),
              p + "post_attention_layernorm.weight": 1 + rand(d, scale=0.1),
              p + "self_attn.q_proj.weight": rand(d, d), p + "self_attn.q_proj.bias": rand(d),
              p + "self_attn.k_proj.weight": rand(kv * hd, d), p + "self_attn.k_proj.bias": rand(kv * hd),
              p + "self_attn.v_proj.weight": rand(kv * hd, d), p + "self_attn.v_proj.bias": rand(kv * hd),
              p + "self_attn.o_proj.weight": rand(d, d),
              p + "mlp.gate_proj.weight": rand(hidden, d), p + "mlp.up_proj.weight": rand(hidden, d),
              p + "mlp.down_proj.weight": rand(d, hidden)}
    return w


def bpe_tokenizer(directory: Path, hub_class: bool) -> None:
    """Dream's tokenizer files: byte-level BPE ``vocab.json``/``merges.txt`` + ``added_tokens.json``.

    ``hub_class``: name ``DreamTokenizer`` through ``auto_map`` exactly as the hub does;
    otherwise name transformers' own ``Qwen2Tokenizer``.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}  # ids 0..255
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "added_tokens.json").write_text(json.dumps(DREAM_SPECIALS))
    config = {"add_bos_token": False, "add_prefix_space": False,
              "additional_special_tokens": ["<|beginoftext|>", "<|mask|>"], "bos_token": "<|beginoftext|>",
              "chat_template": DREAM_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
              "errors": "replace", "mask_token": "<|mask|>", "model_max_length": 131072,
              "pad_token": "<|endoftext|>", "split_special_tokens": False, "unk_token": None,
              "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                                "single_word": False, "special": True}
                                       for t, i in DREAM_SPECIALS.items()}}
    if hub_class:
        config |= {"tokenizer_class": "DreamTokenizer",
                   "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}}
    else:
        config["tokenizer_class"] = "Qwen2Tokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_dream(directory: Path, config: dict | None = None, *, hub_tokenizer: bool = False,
                shards: int = 0) -> Path:
    config = dict(config or DREAM_CONFIG)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    weights = dream_weights(config)
    if shards:
        save_sharded(directory, weights, shards)
    else:
        save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(directory / "model.safetensors"),
                  metadata={"format": "pt"})
    bpe_tokenizer(directory, hub_tokenizer)
    return directory


# ----------------------------------------------------------------------------- reference LLaDA forward

def llada_reference_logits(directory: Path, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """LLaDA's published forward in plain fp32 torch, reading the ORIGINAL tensor names.

    Embedding -> per block: RMSNorm, q/k/v, RoPE (positions 0..T-1, frequencies over
    d_model/n_heads, rotate-half: halves (x1, x2) -> (-x2, x1)), bidirectional attention with
    padded keys masked, kv heads repeated head-by-head, attn_out, residual; RMSNorm,
    silu(ff_proj) * up_proj, ff_out, residual -> final RMSNorm -> untied ``ff_out`` head.
    """
    cfg = json.loads((directory / "config.json").read_text())
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    w: dict[str, torch.Tensor] = {}
    for name in sorted(set(index["weight_map"].values())):
        w |= {k: v.float() for k, v in load_file(str(directory / name)).items()}
    d, heads, kv, eps = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["rms_norm_eps"]
    hd = d // heads
    batch, length = input_ids.shape

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    sin, cos = angles.sin(), angles.cos()

    def rope(t):  # (B, h, T, hd)
        first, second = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-second, first], dim=-1) * sin

    bias = torch.zeros(batch, 1, 1, length)
    if attention_mask is not None:
        bias = bias.masked_fill(attention_mask[:, None, None, :] == 0, torch.finfo(torch.float32).min)

    x = w["model.transformer.wte.weight"][input_ids]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "q_proj.weight"].T).view(batch, length, heads, hd).transpose(1, 2)
        k = (h @ w[p + "k_proj.weight"].T).view(batch, length, kv, hd).transpose(1, 2)
        v = (h @ w[p + "v_proj.weight"].T).view(batch, length, kv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
        scores = q @ k.transpose(-1, -2) / hd ** 0.5 + bias
        att = scores.softmax(-1) @ v
        x = x + att.transpose(1, 2).reshape(batch, length, d) @ w[p + "attn_out.weight"].T
        h = rms(x, w[p + "ff_norm.weight"])
        gated = torch.nn.functional.silu(h @ w[p + "ff_proj.weight"].T) * (h @ w[p + "up_proj.weight"].T)
        x = x + gated @ w[p + "ff_out.weight"].T
    x = rms(x, w["model.transformer.ln_f.weight"])
    return x @ w["model.transformer.ff_out.weight"].T


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def _no_registry(monkeypatch):
    monkeypatch.setattr(loading, "_registered_models", lambda: {})


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory) -> Path:
    return write_llada(tmp_path_factory.mktemp("llada") / "LLaDA-tiny")


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory) -> Path:
    return write_dream(tmp_path_factory.mktemp("dream") / "Dream-tiny")


def _no_remote_code() -> None:
    assert not any(m.startswith("transformers_modules") for m in sys.modules)


IDS = torch.tensor([[8, 3, 60, 60, 1, 60, 61, 20, 5, 60, 2, 7],
                    [61, 61, 61, 9, 4, 60, 60, 0, 60, 12, 60, 69]])  # 69: a padded-embedding row
LEFT_PAD = torch.tensor([[1] * 12, [0, 0, 0] + [1] * 9])


# ----------------------------------------------------------------------------- LLaDA tests

def test_llada_loads_as_bidirectional_llama(llada_dir):
    model = loading.load_model(str(llada_dir), device="cpu", dtype="float32")
    from transformers import LlamaForCausalLM

    assert isinstance(model.module, LlamaForCausalLM)
    assert model.module.config.is_causal is False
    assert model.family is families.LLADA
    assert model.mask_id == 60 == model.tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    assert model.tokenizer.eos_token_id == 61
    assert model.vocab_size == 72  # logits as wide as the padded embedding table
    assert model.max_positions == 64
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert not any(p.requires_grad for p in model.module.parameters())
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}],
                                                 add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>")
    tokenizer = native.load_tokenizer(llada_dir, families.LLADA)
    assert tokenizer.convert_tokens_to_ids("<|mdm_mask|>") == 60 and tokenizer.eos_token_id == 61
    _no_remote_code()


def test_llada_eot_ids_follow_config(llada_dir):
    model = loading.load_model(str(llada_dir), device="cpu", dtype="float32")
    assert model.eot_ids[0] == 61 and model.fill_id == 61


def test_llada_weights_map_onto_llama_names(llada_dir):
    module = native.load_native(llada_dir, families.LLADA, json.loads((llada_dir / "config.json").read_text()),
                                dtype=torch.float32, device=torch.device("cpu"))
    weights = llada_weights(LLADA_CONFIG)
    layer = module.model.layers[1]
    pairs = {"attn_norm": layer.input_layernorm, "ff_norm": layer.post_attention_layernorm,
             "q_proj": layer.self_attn.q_proj, "k_proj": layer.self_attn.k_proj, "v_proj": layer.self_attn.v_proj,
             "attn_out": layer.self_attn.o_proj, "ff_proj": layer.mlp.gate_proj, "up_proj": layer.mlp.up_proj,
             "ff_out": layer.mlp.down_proj}
    for name, sub in pairs.items():
        assert torch.equal(sub.weight, weights[f"model.transformer.blocks.1.{name}.weight"]), name
    assert torch.equal(module.model.embed_tokens.weight, weights["model.transformer.wte.weight"])
    assert torch.equal(module.lm_head.weight, weights["model.transformer.ff_out.weight"])
    assert module.lm_head.weight.data_ptr() != module.model.embed_tokens.weight.data_ptr()
    rotary = module.model.rotary_emb
    assert rotary.inv_freq.device.type == "cpu"
    hd = LLADA_CONFIG["d_model"] // LLADA_CONFIG["n_heads"]
    expected = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    assert torch.allclose(rotary.inv_freq, expected)
    assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"cpu"}


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "left-padding"])
def test_llada_matches_reference_forward(llada_dir, masked):
    model = loading.load_model(str(llada_dir), device="cpu", dtype="float32")
    mask = LEFT_PAD if masked else None
    with torch.no_grad():
        ours = model.logits(IDS, attention_mask=mask)
    expected = llada_reference_logits(llada_dir, IDS, mask)
    assert ours.shape == expected.shape == (2, 12, 72)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    if masked:  # the padded row's real tokens see only real tokens
        alone = llada_reference_logits(llada_dir, IDS[1:, 3:])
        torch.testing.assert_close(ours[1, 3:], alone[0], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        tail = model.logits(IDS, attention_mask=mask, logits_to_keep=4)
    torch.testing.assert_close(tail, ours[:, -4:], atol=1e-5, rtol=1e-5)


def test_llada_bfloat16(llada_dir):
    model = loading.load_model(str(llada_dir), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.module.parameters()} == {torch.bfloat16}
    assert model.module.model.rotary_emb.inv_freq.dtype == torch.float32
    with torch.no_grad():
        ours = model.logits(IDS, attention_mask=LEFT_PAD).float()
    expected = llada_reference_logits(llada_dir, IDS, LEFT_PAD)
    assert torch.isfinite(ours).all()
    assert (ours - expected).abs().max() < 0.1 * expected.abs().max()
    assert (ours.argmax(-1) == expected.argmax(-1)).float().mean() > 0.8


def test_llada_tied_head_and_single_file(tmp_path):
    config = dict(LLADA_CONFIG, weight_tying=True)
    directory = write_llada(tmp_path / "tied", config, shards=1)
    (directory / "model.safetensors.index.json").unlink()
    (directory / "model-00001-of-00001.safetensors").rename(directory / "model.safetensors")
    weights = load_file(str(directory / "model.safetensors"))
    del weights["model.transformer.ff_out.weight"]
    save_file(weights, str(directory / "model.safetensors"))
    model = loading.load_model(str(directory), device="cpu", dtype="float32")
    assert model.module.lm_head.weight is model.module.model.embed_tokens.weight
    with torch.no_grad():
        hidden = model.module.model(input_ids=IDS).last_hidden_state
        ours = model.logits(IDS)
    torch.testing.assert_close(ours, hidden @ weights["model.transformer.wte.weight"].T, atol=1e-4, rtol=1e-4)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_shard(directory: Path, edit) -> None:
    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"]["model.transformer.blocks.1.up_proj.weight"]
    tensors = load_file(str(directory / shard))
    edit(tensors, index["weight_map"], shard)
    save_file(tensors, str(directory / shard))
    index_file.write_text(json.dumps(index))


def test_missing_weight_is_named(llada_dir, tmp_path):
    directory = _copy(llada_dir, tmp_path / "missing")

    def drop(tensors, weight_map, shard):
        del tensors["model.transformer.blocks.1.up_proj.weight"]
        del weight_map["model.transformer.blocks.1.up_proj.weight"]

    _rewrite_shard(directory, drop)
    with pytest.raises(ModelError, match=r"missing weights.*model\.transformer\.blocks\.1\.up_proj\.weight"):
        loading.load_model(str(directory), device="cpu", dtype="float32")


def test_unexpected_weight_is_named(llada_dir, tmp_path):
    directory = _copy(llada_dir, tmp_path / "unexpected")

    def add(tensors, weight_map, shard):
        tensors["model.transformer.blocks.0.q_norm.weight"] = torch.ones(32)
        weight_map["model.transformer.blocks.0.q_norm.weight"] = shard

    _rewrite_shard(directory, add)
    with pytest.raises(ModelError, match=r"unexpected checkpoint tensors.*blocks\.0\.q_norm\.weight"):
        loading.load_model(str(directory), device="cpu", dtype="float32")


def test_index_and_shards_must_agree(llada_dir, tmp_path):
    directory = _copy(llada_dir, tmp_path / "disagree")

    def drop_tensor_only(tensors, weight_map, shard):
        del tensors["model.transformer.blocks.1.up_proj.weight"]

    _rewrite_shard(directory, drop_tensor_only)
    with pytest.raises(ModelError, match=r"lacks tensors.*blocks\.1\.up_proj\.weight"):
        loading.load_model(str(directory), device="cpu", dtype="float32")


def test_wrong_shape_is_named(llada_dir, tmp_path):
    directory = _copy(llada_dir, tmp_path / "shape")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"mlp_hidden_size": 40}))
    with pytest.raises(ModelError, match=r"ff_out\.weight has shape \[32, 48\]|shape \[48, 32\]"):
        loading.load_model(str(directory), device="cpu", dtype="float32")


@pytest.mark.parametrize("key, value", [
    ("include_bias", True), ("include_qkv_bias", True), ("alibi", True), ("rope", False),
    ("attention_layer_norm", True), ("layer_norm_type", "default"), ("block_type", "sequential"),
    ("activation_type", "gelu"), ("scale_logits", True), ("input_emb_norm", True), ("block_group_size", 2),
    ("bias_for_layer_norm", True), ("moe_num_experts", 8), ("embedding_size", 32),
])
def test_unsupported_llada_configs_are_named(key, value):
    with pytest.raises(ModelError, match=key):
        native.llada_config(dict(LLADA_CONFIG, **{key: value}))


def test_llada_defaults_follow_the_authors_config():
    config = {k: v for k, v in LLADA_CONFIG.items() if k not in ("n_kv_heads", "mlp_hidden_size")}
    hf = native.llada_config(config | {"multi_query_attention": True})
    assert hf.num_key_value_heads == 1 and hf.intermediate_size == 4 * 32
    assert hf.rope_parameters["rope_theta"] == 500000.0 and hf.rms_norm_eps == 1e-5
    assert hf.vocab_size == 72 and hf.tie_word_embeddings is False and hf.is_causal is False
    with pytest.raises(ModelError, match="weight_tying|block_type"):  # bare config: GPT-2-like defaults
        native.llada_config({"model_type": "llada", "d_model": 32, "n_heads": 4})


# ----------------------------------------------------------------------------- Dream tests

def test_dream_loads_as_bidirectional_qwen2(dream_dir):
    model = loading.load_model(str(dream_dir), device="cpu", dtype="float32")
    from transformers import Qwen2ForCausalLM

    assert isinstance(model.module, Qwen2ForCausalLM)
    assert model.module.config.is_causal is False
    assert set(model.module.config.layer_types) == {"full_attention"}
    assert model.family is families.DREAM
    assert model.mask_id == 260 == model.tokenizer.mask_token_id
    assert model.tokenizer.eos_token_id == 256
    assert model.vocab_size == 264
    weights = dream_weights(DREAM_CONFIG)
    attn = model.module.model.layers[1].self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        stored = weights[f"model.layers.1.self_attn.{name}.bias"].bfloat16().float()  # saved as bf16
        assert torch.equal(getattr(attn, name).bias, stored)
    assert attn.o_proj.bias is None
    _no_remote_code()


def test_dream_is_bidirectional(dream_dir):
    model = loading.load_model(str(dream_dir), device="cpu", dtype="float32")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    changed = ids.clone()
    changed[0, -1] = 7
    with torch.no_grad():
        first = model.module(input_ids=ids).logits
        second = model.module(input_ids=changed).logits
    assert (first[0, 0] - second[0, 0]).abs().max() > 1e-4  # position 0 sees the last token


def test_dream_logits_are_realigned(dream_dir):
    model = loading.load_model(str(dream_dir), device="cpu", dtype="float32")
    ids = torch.tensor([[257, 10, 20, 30, 258, 260, 260, 260, 260], [256, 256, 257, 40, 50, 258, 260, 260, 260]])
    mask = torch.tensor([[1] * 9, [0, 0] + [1] * 7])
    with torch.no_grad():
        raw = model.module(input_ids=ids, attention_mask=mask).logits
        aligned = model.logits(ids, attention_mask=mask)
        tail = model.logits(ids, attention_mask=mask, logits_to_keep=3)
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1])
    torch.testing.assert_close(tail, raw[:, -4:-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dream_dtypes_and_shards(dream_dir, tmp_path, dtype):
    sharded = write_dream(tmp_path / "sharded", shards=2)
    single = loading.load_model(str(dream_dir), device="cpu", dtype=dtype)
    split = loading.load_model(str(sharded), device="cpu", dtype=dtype)
    assert {p.dtype for p in split.module.parameters()} == {dtype}
    ids = torch.tensor([[257, 10, 20, 260, 260, 258]])
    with torch.no_grad():
        torch.testing.assert_close(single.logits(ids), split.logits(ids))
        assert torch.isfinite(split.logits(ids)).all()


def test_dream_missing_bias_is_named(dream_dir, tmp_path):
    directory = _copy(dream_dir, tmp_path / "nobias")
    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["model.layers.0.self_attn.k_proj.bias"]
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ModelError, match=r"missing weights.*model\.layers\.0\.self_attn\.k_proj\.bias"):
        loading.load_model(str(directory), device="cpu", dtype="float32")


def test_dream_tied_head(tmp_path):
    directory = write_dream(tmp_path / "tied", dict(DREAM_CONFIG, tie_word_embeddings=True))
    model = loading.load_model(str(directory), device="cpu", dtype="float32")
    assert model.module.lm_head.weight is model.module.model.embed_tokens.weight
    # a tied checkpoint that also stores its head: accepted when equal, refused when not
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, str(directory / "model.safetensors"))
    loading.load_model(str(directory), device="cpu", dtype="float32")
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ModelError, match="lm_head.weight differs"):
        loading.load_model(str(directory), device="cpu", dtype="float32")


def test_dream_without_attention_bias(tmp_path):
    directory = write_dream(tmp_path / "nobias", dict(DREAM_CONFIG, attention_bias=False))
    tensors = load_file(str(directory / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.endswith(".bias")}, str(directory / "model.safetensors"))
    model = loading.load_model(str(directory), device="cpu", dtype="float32")
    assert model.module.model.layers[0].self_attn.q_proj.bias is None
    with torch.no_grad():
        assert torch.isfinite(model.logits(torch.tensor([[257, 10, 260, 258]]))).all()


@pytest.mark.parametrize("scaling", [None, {"type": "default"}, {"rope_type": "default"}])
def test_dream_rope_scaling_default(scaling):
    hf = native.dream_config(dict(DREAM_CONFIG, rope_scaling=scaling))
    assert hf.rope_parameters == {"rope_type": "default", "rope_theta": 1000000.0}


@pytest.mark.parametrize("key, value", [("use_sliding_window", True), ("use_mrope", True),
                                        ("rope_scaling", {"type": "no-such-rope"}), ("head_dim", 16),
                                        ("num_key_value_heads", 3)])
def test_unsupported_dream_configs_are_named(key, value):
    with pytest.raises(ModelError, match=key.split("_")[0]):
        native.dream_config(dict(DREAM_CONFIG, **{key: value}))


def test_dream_hub_tokenizer_without_remote_code(tmp_path):
    directory = tmp_path / "hub-tok"
    directory.mkdir()
    bpe_tokenizer(directory, hub_class=True)
    tokenizer = native.load_tokenizer(directory, families.DREAM)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert (tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (260, 256, 256)
    assert tokenizer("hi <|mask|>").input_ids[-1] == 260
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    _no_remote_code()


def test_dream_hub_layout_loads(tmp_path):
    directory = write_dream(tmp_path / "hub", hub_tokenizer=True)
    model = loading.load_model(str(directory), device="cpu", dtype="float32")
    assert model.mask_id == 260
    _no_remote_code()


def test_no_remote_code_imported():
    _no_remote_code()


@pytest.mark.parametrize("which", ["llada", "dream"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_native_checkpoints_decode_with_default_strategy(llada_dir, dream_dir, which, dtype):
    from dllm_strategies import decode

    model = loading.load_model(str(llada_dir if which == "llada" else dream_dir), device="cpu", dtype=dtype)
    vocab = min(model.vocab_size, len(model.tokenizer))
    prompts = [[3, 4, 5, 6], [7, 8]]
    with torch.no_grad():
        result = decode(model, prompts, gen_length=8, block_length=4, steps=8)
        again = decode(model, [prompts[1]], gen_length=8, block_length=4, steps=8)
    assert result.tokens.shape == (2, 8) and not (result.tokens == model.mask_id).any()
    assert int(result.tokens.max()) < model.vocab_size and vocab > 0
    assert result.steps.tolist() == [8, 8]
    if dtype == "float32":  # bf16 batch vs single can differ in the last bit; fp32 must agree
        assert torch.equal(result.tokens[1], again.tokens[0])
    _no_remote_code()
