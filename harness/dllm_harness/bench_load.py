"""Load benchmark: time and peak memory of ``load_model`` on a LLaDA-shaped checkpoint.

``python -m dllm_harness.bench_load --params 1e9 --out DIR`` writes a checkpoint of about
``--params`` random weights in LLaDA's hub layout (config.json keys, ``model.transformer.*``
tensor names, ``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json``,
a tiny tokenizer), one shard at a time so this process never holds more than a shard, then loads
it with :func:`dllm_strategies.models.loading.load_model` in a fresh subprocess and reports the
load time and the child's peak RSS (``ru_maxrss``, taken after one forward pass so that weights
still memory-mapped from the files count) against the loaded weights' byte size. Two ratios are
printed: the raw peak over the weights, and the peak less the child's resident size just before
loading (Python, torch and transformers imported) over the weights; the loader's own overhead is
the second. Target: at most 1.3.

Run with ``PYTHONPATH=<repo>:<repo>/harness``.  ``--keep`` keeps an existing checkpoint of the
same shape in ``--out`` instead of rewriting it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB_LARGE = 126464  # LLaDA-8B's vocabulary


def shape_for(params: float) -> dict:
    """LLaDA-8B proportions (head dim 128, n_layers = d_model / 128, mlp = 3 d_model), scaled."""
    vocab = VOCAB_LARGE if params >= 2e9 else 32768
    best = None
    for d in range(256, 8193, 128):
        layers = max(2, d // 128)
        count = layers * 13 * d * d + 2 * vocab * d + (2 * layers + 1) * d
        if best is None or abs(count - params) < abs(best[0] - params):
            best = (count, d, layers)
    count, d, layers = best
    return {"params": count, "d_model": d, "n_layers": layers, "n_heads": d // 128, "mlp_hidden_size": 3 * d,
            "vocab_size": vocab}


def llada_config(shape: dict) -> dict:
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": shape["d_model"],
        "embedding_dropout": 0.0, "embedding_size": shape["vocab_size"], "eos_token_id": 1,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_device": "meta",
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": 3,
        "max_sequence_length": 4096, "mlp_hidden_size": shape["mlp_hidden_size"], "mlp_ratio": 4,
        "model_type": "llada", "multi_query_attention": None, "n_heads": shape["n_heads"],
        "n_kv_heads": shape["n_heads"], "n_layers": shape["n_layers"], "pad_token_id": 1,
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "use_cache": False, "vocab_size": shape["vocab_size"],
        "weight_tying": False,
    }


def tensor_shapes(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    d, hidden, vocab = shape["d_model"], shape["mlp_hidden_size"], shape["vocab_size"]
    out = [("model.transformer.wte.weight", (vocab, d))]
    for i in range(shape["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        out += [(p + "attn_norm.weight", (d,)), (p + "q_proj.weight", (d, d)), (p + "k_proj.weight", (d, d)),
                (p + "v_proj.weight", (d, d)), (p + "attn_out.weight", (d, d)), (p + "ff_norm.weight", (d,)),
                (p + "ff_proj.weight", (hidden, d)), (p + "up_proj.weight", (hidden, d)),
                (p + "ff_out.weight", (d, hidden))]
    out += [("model.transformer.ln_f.weight", (d,)), ("model.transformer.ff_out.weight", (vocab, d))]
    return out


def write_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|startoftext|>": 2, "<|mdm_mask|>": 3, "hello": 4, "world": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>", "<|startoftext|>", "<|mdm_mask|>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"}))


def write_checkpoint(directory: Path, shape: dict, shards: int, save_dtype: str, seed: int = 0) -> int:
    """Write the checkpoint shard by shard; returns its tensor bytes."""
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, save_dtype)
    directory.mkdir(parents=True, exist_ok=True)
    specs = tensor_shapes(shape)
    element = torch.tensor([], dtype=dtype).element_size()
    total = sum(math.prod(s) for _, s in specs) * element
    budget = math.ceil(total / shards)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in specs:
        nbytes = math.prod(dims) * element
        if groups[-1] and size + nbytes > budget:
            groups.append([])
            size = 0
        groups[-1].append((name, dims))
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for k, group in enumerate(groups):
        file_name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        part = {}
        for name, dims in group:
            if len(dims) == 1:
                part[name] = torch.ones(dims, dtype=dtype)
            else:
                part[name] = (torch.randn(dims, generator=gen) * 0.02).to(dtype)
        save_file(part, str(directory / file_name), metadata={"format": "pt"})
        weight_map |= {name: file_name for name in part}
        del part
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (directory / "config.json").write_text(json.dumps(llada_config(shape), indent=2))
    write_tokenizer(directory)
    return total


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(directory: str, dtype: str, threads: int) -> None:
    """Runs in the fresh subprocess: import, measure, load, measure; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    import transformers  # noqa: F401  (import cost belongs to the baseline)
    from transformers import LlamaForCausalLM  # noqa: F401

    from dllm_strategies.models import loading

    try:
        loading._registered_models()
    except ImportError:  # the plugin registry is optional for this benchmark
        loading._registered_models = lambda: {}
    before = _rss_kib()
    start = time.perf_counter()
    model = loading.load_model(directory, device="cpu", dtype=dtype)
    seconds = time.perf_counter() - start
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    weights = sum(p.numel() * p.element_size() for p in model.module.parameters())
    # One forward touches every weight: weights left memory-mapped from the files (same dtype
    # on CPU) only become resident then, so the peak that counts is taken after it.
    with torch.no_grad():
        logits = model.logits(torch.tensor([[4, 5, 3, 3]]))
    assert torch.isfinite(logits).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_before_kib": before, "peak_load_kib": peak_load, "peak_kib": peak,
                      "rss_after_kib": _rss_kib(), "weight_bytes": weights, "dtype": str(model.dtype)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=1e9, help="approximate parameter count")
    parser.add_argument("--out", type=Path, required=True, help="directory for the checkpoint")
    parser.add_argument("--dtype", default="float32", help="dtype load_model casts to (default float32)")
    parser.add_argument("--save-dtype", default="bfloat16", help="checkpoint dtype (the hubs ship bfloat16)")
    parser.add_argument("--shards", type=int, default=6, help="number of shards (LLaDA-8B has 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the loading process")
    parser.add_argument("--keep", action="store_true", help="reuse a checkpoint of the same shape in --out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.dtype, args.threads)
        return 0

    shape = shape_for(args.params)
    ckpt = args.out / "llada-bench"
    config_file = ckpt / "config.json"
    reuse = args.keep and config_file.is_file() and json.loads(config_file.read_text()) == llada_config(shape)
    start = time.perf_counter()
    if reuse:
        file_bytes = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    else:
        import torch

        torch.set_num_threads(args.threads)
        file_bytes = write_checkpoint(ckpt, shape, args.shards, args.save_dtype)
    written = time.perf_counter() - start
    print(f"checkpoint: {shape['params'] / 1e6:.1f}M params (d_model {shape['d_model']}, {shape['n_layers']} layers, "
          f"vocab {shape['vocab_size']}), {file_bytes / 2**20:.0f} MiB {args.save_dtype} in {args.shards} shards "
          f"{'reused' if reuse else f'written in {written:.1f}s'}: {ckpt}")

    env = dict(os.environ)
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), str(repo / "harness"), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "dllm_harness.bench_load", "--out", str(args.out), "--child",
                           str(ckpt), "--dtype", args.dtype, "--threads", str(args.threads)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    weights = result["weight_bytes"]
    peak, before = result["peak_kib"] * 1024, result["rss_before_kib"] * 1024
    mib = 2 ** 20
    print(f"load_model(dtype={args.dtype}): {result['seconds']:.2f}s, weights {weights / mib:.0f} MiB "
          f"({result['dtype']})")
    print(f"child RSS: before load {before / mib:.0f} MiB, peak while loading "
          f"{result['peak_load_kib'] * 1024 / mib:.0f} MiB, peak after one forward {peak / mib:.0f} MiB, "
          f"now {result['rss_after_kib'] * 1024 / mib:.0f} MiB")
    print(f"peak RSS / weights = {peak / weights:.3f}; (peak - pre-load RSS) / weights = "
          f"{(peak - before) / weights:.3f}  (target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
