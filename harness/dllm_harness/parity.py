"""Check strategies against the authors' own decoders, token for token (docs/parity.md).

The authors' code (LLaDA's ``generate``, Fast-dLLM's, dParallel's, Dream's
``diffusion_generate``) needs transformers 4.x and never enters this project; a user who has it
locally runs this recipe in three steps, the middle one in an environment where their code runs::

    python -m dllm_harness.parity prepare --out /tmp/parity --problems 50
    /path/to/authors-env/bin/python harness/dllm_harness/parity_authors.py --dir /tmp/parity \\
        --llada ~/src/LLaDA --fast-dllm ~/src/Fast-dLLM --dparallel ~/src/dParallel --gen-lengths 64 256
    python -m dllm_harness.parity compare --dir /tmp/parity --gen-lengths 64 256

``prepare`` writes the model in LLaDA's and Dream's checkpoint layouts (the authors' classes load
them) and the prompts as token ids; ``parity_authors.py`` (torch and the authors' code only) runs
each of their functions on every prompt alone and writes the tokens and wall times;
``compare`` decodes the same prompts alone with the matching strategy of this project, on the
same checkpoints loaded by ``load_model``, and prints per case how many rows are identical and
the wall-time ratio.  The cases (author function -> strategy) are :data:`CASES`, shared with
``parity_authors.py`` by name.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dllm_strategies import decode, discovery, load_model
from dllm_strategies.decode import encode_prompts
from dllm_strategies.errors import ConfigError
from dllm_strategies.models.loading import registered_or_local_dir
from dllm_strategies.models.native import llada_source_name

BLOCK = 32
#: case -> (checkpoint layout, this project's strategy, block length: None for the whole response)
CASES: dict[str, tuple[str, str, int | None]] = {
    "llada.generate": ("llada", "low_confidence", BLOCK),
    "fast_dllm.generate(threshold=0.9)": ("llada", "threshold(tau=0.9)", BLOCK),
    "fast_dllm.generate_with_prefix_cache(threshold=0.9)": ("llada", "threshold(tau=0.9)+prefix_cache", BLOCK),
    "fast_dllm.generate_with_dual_cache(threshold=0.9)": ("llada", "threshold(tau=0.9)+dual_cache", BLOCK),
    "dparallel.generate(threshold=0.5)": ("llada", "entropy_threshold(tau=0.5)", BLOCK),
    "dream.diffusion_generate(alg=maskgit_plus)": ("dream", "dream_schedule+low_confidence", None),
    "dream.diffusion_generate(alg=topk_margin)": ("dream", "dream_schedule+margin", None),
    "dream.diffusion_generate(alg=entropy)": ("dream", "dream_schedule+entropy", None),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


# ------------------------------------------------------------------------------------------
# prepare: the model in the authors' layouts, the prompts as ids
# ------------------------------------------------------------------------------------------
def _llada_config(config: Any, mask_id: int) -> dict[str, Any]:
    """LLaDA's ``config.json`` (the keys of LLaDA-8B-Instruct's) for a bidirectional Llama."""
    rope = config.rope_parameters or {}
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama",
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True, "bias_for_layer_norm": False,
        "block_group_size": 1, "d_model": config.hidden_size, "embedding_dropout": 0.0,
        "embedding_size": config.vocab_size, "vocab_size": config.vocab_size, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "cpu",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": mask_id,
        "max_sequence_length": config.max_position_embeddings, "mlp_hidden_size": config.intermediate_size,
        "mlp_ratio": 4, "multi_query_attention": None, "n_heads": config.num_attention_heads,
        "n_kv_heads": config.num_key_value_heads, "n_layers": config.num_hidden_layers,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id, "precision": "fp32",
        "residual_dropout": 0.0, "rms_norm_eps": config.rms_norm_eps, "rope": True, "rope_full_precision": True,
        "rope_theta": float(rope.get("rope_theta", 10000.0)), "scale_logits": False, "use_cache": False,
        "weight_tying": bool(config.tie_word_embeddings), "torch_dtype": "float32",
    }


def _dream_config(config: Any, mask_id: int) -> dict[str, Any]:
    """Dream's ``config.json`` (the keys of Dream-v0-Instruct-7B's) for a bidirectional Llama."""
    rope = config.rope_parameters or {}
    eos = config.eos_token_id
    return {
        "architectures": ["DreamModel"], "model_type": "Dream", "attention_dropout": 0.0,
        "bos_token_id": config.pad_token_id, "eos_token_id": eos[0] if isinstance(eos, list) else eos,
        "hidden_act": "silu", "hidden_size": config.hidden_size, "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size, "mask_token_id": mask_id,
        "max_position_embeddings": config.max_position_embeddings, "max_window_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads, "pad_token_id": config.pad_token_id,
        "rms_norm_eps": config.rms_norm_eps, "rope_scaling": None, "rope_theta": float(rope.get("rope_theta", 10000.0)),
        "sliding_window": None, "tie_word_embeddings": bool(config.tie_word_embeddings), "torch_dtype": "float32",
        "use_cache": False, "use_mrope": False, "use_sliding_window": False, "vocab_size": config.vocab_size,
    }


def export(model: Any, source: Path, out: Path, layout: str) -> Path:
    """Write ``model`` (a bidirectional Llama loaded from ``source``) as a ``layout`` checkpoint:
    LLaDA's tensor names, or Dream's (Qwen2's, with zero q/k/v biases: Dream's attention has
    them).  Dream shifts its logits by one position, so on the Dream layout the model predicts
    a neighbour's token: its text means nothing, but both decoders see the same logits, which
    is all a decoder comparison needs."""
    from safetensors.torch import save_file

    module, config = model.module, model.module.config
    if getattr(config, "model_type", None) != "llama" or getattr(config, "is_causal", True):
        raise ConfigError(f"export needs one of the project's bidirectional Llama models, got {config.model_type!r}")
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().contiguous() for name, tensor in module.state_dict().items()}
    if layout == "llada":
        weights = {llada_source_name(name): tensor for name, tensor in state.items()}
        settings = _llada_config(config, model.mask_id)
    elif layout == "dream":
        weights = dict(state)
        for layer in range(config.num_hidden_layers):
            for proj in ("q_proj", "k_proj", "v_proj"):
                weight = weights[f"model.layers.{layer}.self_attn.{proj}.weight"]
                weights[f"model.layers.{layer}.self_attn.{proj}.bias"] = torch.zeros(weight.shape[0])
        settings = _dream_config(config, model.mask_id)
        special = {k: settings[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id")}
        (out / "generation_config.json").write_text(json.dumps(special, indent=2))  # Dream's class reads it
    else:
        raise ConfigError(f"layout must be 'llada' or 'dream', got {layout!r}")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(settings, indent=2))
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    return out


def prepare(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model = load_model(args.model)
    source = registered_or_local_dir(args.model)
    if source is None:
        raise ConfigError(f"--model {args.model!r} is neither a registered name nor a local checkpoint directory")
    for layout in ("llada", "dream"):
        export(model, source, out / layout, layout)
    problems = discovery.task("arith").test_problems()[:args.problems]
    rows = []
    for problem in problems:
        ids, _ = encode_prompts(model, [problem.question], chat=True)
        rows.append(ids[0].tolist())
    (out / "prompts.json").write_text(json.dumps({"mask_id": model.mask_id, "block_length": BLOCK,
                                                 "prompts": rows}))
    print(f"wrote {out / 'llada'}, {out / 'dream'} and {len(rows)} prompts to {out / 'prompts.json'}")
    return 0


# ------------------------------------------------------------------------------------------
# compare: this project's strategies on the same checkpoints and prompts
# ------------------------------------------------------------------------------------------
def ours(directory: Path, case: str, gen_length: int, prompts: list[list[int]],
         strategy: str | None = None) -> tuple[list[list[int]], list[int], float]:
    """Each prompt decoded alone by the case's strategy (or ``strategy``): the responses, NFEs
    and total wall time."""
    layout, spec, block = CASES[case]
    spec = strategy or spec
    model = load_model(str(directory / layout))
    rows, nfe, seconds = [], [], 0.0
    for prompt in prompts:
        started = time.perf_counter()
        with torch.inference_mode():
            result = decode(model, [prompt], strategy=spec, gen_length=gen_length,
                            block_length=block or gen_length, steps=gen_length)
        seconds += time.perf_counter() - started
        rows.append(result.tokens[0].tolist())
        nfe.append(int(result.nfe[0]))
    return rows, nfe, seconds


def _mean(values: list[int | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known) / len(known):.1f}" if len(known) == len(values) and known else "-"


def compare(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    torch.set_num_threads(args.threads)
    prompts = json.loads((directory / "prompts.json").read_text())["prompts"]
    authors = json.loads((directory / "authors.json").read_text())
    print("| author function | strategy | gen | rows identical | author NFE | our NFE | author s | ours s | "
          "ours / author |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for case in CASES:
        if args.cases and args.cases not in case:
            continue
        for gen_length in args.gen_lengths:
            theirs = authors.get(f"{case}@{gen_length}")
            if theirs is None:
                continue
            got, nfe, seconds = ours(directory, case, gen_length, prompts[:len(theirs["tokens"])], args.strategy)
            same = sum(a == b for a, b in zip(got, theirs["tokens"], strict=True))
            failed += same != len(got)
            # LLaDA's and Dream's functions return no NFE: one forward per step, `steps` of them.
            their_nfe = _mean(theirs.get("nfe") or [None]) if any(theirs.get("nfe") or []) else f"{gen_length}"
            spec = args.strategy or CASES[case][1]
            print(f"| `{case}` | `{spec}` | {gen_length} | {same}/{len(got)} | {their_nfe} | {_mean(nfe)} | "
                  f"{theirs['seconds']:.1f} | {seconds:.1f} | {seconds / theirs['seconds']:.2f} |", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dllm_harness.parity", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="export the model in LLaDA's and Dream's layouts and the prompts as ids")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="default", help="a model name or checkpoint (a bidirectional Llama)")
    p.add_argument("--problems", type=int, default=50, help="the first N problems of the test split")
    p.set_defaults(func=prepare)
    p = sub.add_parser("compare", help="decode with this project's strategies and compare with authors.json")
    p.add_argument("--dir", required=True)
    p.add_argument("--gen-lengths", type=int, nargs="+", default=[64, 256])
    p.add_argument("--threads", type=int, default=1, help="torch threads (use the authors' run's)")
    p.add_argument("--cases", help="only the cases whose name contains this text")
    p.add_argument("--strategy", help="decode with this strategy instead of each case's own (to see what a "
                                      "part of the composition changes, e.g. Dream's scores without its schedule)")
    p.set_defaults(func=compare)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
