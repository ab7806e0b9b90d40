"""GPU throughput benchmark: tokens per second and NFE of a strategy matrix on a LLaDA-8B-shaped model.

Builds a bidirectional Llama with LLaDA-8B-Instruct's shape (or a 1.5B or tiny one) from a config
with random weights, directly on the device in bfloat16 (no CPU copy of the weights), and times
``dllm_strategies.decode`` for every strategy of the matrix at every gen length and batch size:

* strategies: LLaDA's low-confidence baseline (``--tokens-per-step`` tokens per step, 1 by
  default), ``threshold(tau=0.9)`` and ``entropy_threshold(tau=0.5)``, each alone, with
  ``prefix_cache`` and with ``dual_cache``; ``--with eot learned_filter ...`` adds each extra
  spec to every combination it composes with (combinations that cannot be built or started are
  listed as skipped, with the reason);
* gen lengths 256 and 1024, batches 1 and 8 (left-padded prompts of different lengths);
* the overhead of the plugin loop over the plain reference loop
  (``dllm_strategies.testing.reference.llada_reference``, LLaDA's algorithm written plainly).

Random weights decode meaningless text, and their low confidences make threshold rules commit
about one token per step: the NFE column reports what each run really took (forwards of the
batch, refresh forwards of a cache included); tokens per second counts every response position
decided (batch x gen length) over the wall time, CUDA synchronised around each run, after an
untimed warm-up (one block) of the same strategy and batch.  Definitions: docs/caching.md.

    python -m dllm_harness.bench_gpu --output bench/                  # CUDA, LLaDA-8B shape
    python -m dllm_harness.bench_gpu --size 1b --gen-lengths 256 --batches 1 --output bench/
    python -m dllm_harness.bench_gpu --device cpu --size tiny --output /tmp/bench   # CI-sized
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from dllm_strategies import decode
from dllm_strategies.errors import DllmError
from dllm_strategies.models.adapter import DiffusionModel
from dllm_strategies.models.families import LLADA
from dllm_strategies.strategy import build_strategy
from dllm_strategies.testing.reference import llada_reference

from dllm_harness import metrics

BASES = {"baseline": None, "threshold(tau=0.9)": "threshold(tau=0.9)",
         "entropy_threshold(tau=0.5)": "entropy_threshold(tau=0.5)"}
CACHES = ("", "prefix_cache", "dual_cache")


@attrs.frozen
class ModelSize:
    """Shape of the random bidirectional Llama (LLaDA's special ids at full vocabulary)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    rope_theta: float = 500000.0
    max_positions: int = 4096
    mask_id: int = LLADA.mask_id
    eot_ids: tuple[int, ...] = LLADA.eot_ids
    fill_id: int = LLADA.fill_id


SIZES = {
    # LLaDA-8B-Instruct: d_model 4096, 32 layers, 32 heads, MLP 12288, vocabulary 126464 (8.0B parameters).
    "llada-8b": ModelSize(hidden_size=4096, intermediate_size=12288, num_layers=32, num_heads=32, vocab_size=126464),
    # The same vocabulary and head size at 1.5B parameters.
    "1b": ModelSize(hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=16, vocab_size=126464),
    # CPU-sized, for CI.
    "tiny": ModelSize(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, vocab_size=512,
                      rope_theta=10000.0, max_positions=2048, mask_id=511, eot_ids=(1, 2), fill_id=1),
}


# ------------------------------------------------------------------------------------------
# Model and inputs
# ------------------------------------------------------------------------------------------
def build_model(size: ModelSize, device: torch.device, dtype: torch.dtype, seed: int = 0) -> DiffusionModel:
    """A random ``LlamaForCausalLM(is_causal=False)`` created directly on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=size.vocab_size, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads, num_key_value_heads=size.num_heads,
        max_position_embeddings=size.max_positions, rope_theta=size.rope_theta, rms_norm_eps=1e-5,
        tie_word_embeddings=False, is_causal=False, mask_token_id=size.mask_id, eos_token_id=list(size.eot_ids),
        pad_token_id=size.fill_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # parameters are allocated and initialised on the device
        module = LlamaForCausalLM._from_config(config, dtype=dtype)
    module.eval().requires_grad_(False)
    return DiffusionModel(module=module, tokenizer=None, family=LLADA, mask_id=size.mask_id, eot_ids=size.eot_ids,
                          fill_id=size.fill_id, vocab_size=size.vocab_size, max_positions=size.max_positions,
                          name=f"random-{size.num_layers}x{size.hidden_size}")


def make_prompts(size: ModelSize, batch: int, length: int, *, ragged: bool, seed: int = 0) -> list[list[int]]:
    """Random prompt ids (never a special id); with ``ragged`` row i is ``3 i`` tokens shorter."""
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor([size.mask_id, *size.eot_ids, size.fill_id])
    ids = torch.randint(3, size.vocab_size, (batch, length), generator=g)
    ids = torch.where(torch.isin(ids, special), 3, ids)
    lengths = [max(1, length - 3 * i) if ragged else length for i in range(batch)]
    return [row[length - n:] for row, n in zip(ids.tolist(), lengths, strict=True)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------------------
# The strategy matrix
# ------------------------------------------------------------------------------------------
def strategy_matrix(extras: list[str]) -> list[tuple[str, str | None]]:
    """(label, spec) of every base x cache, then every base x extra x cache."""
    out = []
    for extra in [None, *extras]:
        for label, spec in BASES.items():
            for cache in CACHES:
                parts = [p for p in (spec, extra, cache or None) if p]
                name = "+".join([label] + [p for p in (extra, cache) if p])
                out.append((name, "+".join(parts) or None))
    return out


def run_matrix(model: DiffusionModel, size: ModelSize, args, device: torch.device, report: dict,
               save) -> None:
    baseline_s: dict[tuple[int, int], float] = {}
    for gen_length in args.gen_lengths:
        for batch in args.batches:
            prompts = make_prompts(size, batch, args.prompt_length, ragged=True, seed=args.seed)
            for label, spec in strategy_matrix(args.extras):
                try:
                    row = measure(model, prompts, label, spec, gen_length, batch, args, device)
                except DllmError as exc:
                    report["skipped"].append({"strategy": label, "gen_length": gen_length, "batch": batch,
                                              "reason": f"{type(exc).__name__}: {exc}"})
                    print(f"skipped {label} (gen {gen_length}, batch {batch}): {exc}", flush=True)
                    continue
                if label == "baseline":
                    baseline_s[(gen_length, batch)] = row["seconds"]
                base = baseline_s.get((gen_length, batch))
                row["speedup"] = base / row["seconds"] if base else None
                report["runs"].append(row)
                print(_line(row), flush=True)
                save()


def measure(model: DiffusionModel, prompts: list[list[int]], label: str, spec: str | None, gen_length: int,
            batch: int, args, device: torch.device) -> dict:
    block = min(args.block_length, gen_length)
    steps = gen_length // args.tokens_per_step

    def run(strategy, length: int, steps_: int):
        return decode(model, prompts, strategy=strategy, gen_length=length, block_length=block, steps=steps_,
                      seed=args.seed)

    # warm-up: one block, same strategy and batch; every run gets a fresh strategy, built untimed
    run(build_strategy(spec), block, max(1, block // args.tokens_per_step))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, result = [], None
    for _ in range(args.repeats):
        strategy = build_strategy(spec)
        result, seconds = timed(lambda: run(strategy, gen_length, steps), device)  # noqa: B023
        times.append(seconds)
    seconds = statistics.median(times)
    nfe_row = float(result.nfe.double().mean())
    return {
        "strategy": label, "spec": spec or "", "gen_length": gen_length, "batch": batch, "block_length": block,
        # random weights write no end-of-text: every response position is an answer token
        "steps": steps, "seconds": seconds, "tokens_per_second": metrics.tokens_per_second(batch * gen_length, seconds),
        "nfe": result.forwards, "nfe_per_row": nfe_row,
        "tokens_per_forward": metrics.tokens_per_forward(batch * gen_length, int(result.nfe.sum())),
        "positions": result.positions, "positions_per_forward": result.positions / result.forwards,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "repeats": args.repeats,
    }


def _line(row: dict) -> str:
    speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
    return (f"{row['strategy']:<48} gen {row['gen_length']:>5} batch {row['batch']:>2}  NFE {row['nfe']:>5}  "
            f"{row['seconds']:8.3f} s  {row['tokens_per_second']:9.1f} tok/s  {speed}")


# ------------------------------------------------------------------------------------------
# Overhead of the plugin loop over the plain loop
# ------------------------------------------------------------------------------------------
def measure_overhead(model: DiffusionModel, size: ModelSize, args, device: torch.device) -> list[dict]:
    out = []
    gen_length = args.overhead_gen_length or args.gen_lengths[0]
    block = min(args.block_length, gen_length)
    for batch in args.batches:
        prompt = torch.tensor(make_prompts(size, batch, args.prompt_length, ragged=False, seed=args.seed),
                              device=device)  # equal lengths: the plain loop has no padding

        def plain():
            return llada_reference(model.module, prompt, gen_length, block, gen_length, model.mask_id)

        def plugin():
            return decode(model, prompt, prompt_mask=torch.ones_like(prompt, dtype=torch.bool),
                          strategy=build_strategy(None), gen_length=gen_length, block_length=block,
                          steps=gen_length, seed=args.seed).tokens

        same = torch.equal(timed(plain, device)[0], timed(plugin, device)[0])  # also the warm-up
        times: dict[str, list[float]] = {"plain": [], "plugin": []}
        for _ in range(args.overhead_repeats):
            for name, fn in (("plain", plain), ("plugin", plugin)):
                times[name].append(timed(fn, device)[1])
        plain_s, plugin_s = statistics.median(times["plain"]), statistics.median(times["plugin"])
        row = {"batch": batch, "gen_length": gen_length, "block_length": block, "steps": gen_length,
               "plain_s": plain_s, "plugin_s": plugin_s, "overhead": plugin_s / plain_s - 1,
               "identical_tokens": same, "repeats": args.overhead_repeats}
        print(f"overhead batch {batch} gen {gen_length}: plain {plain_s:.3f} s, plugin {plugin_s:.3f} s "
              f"({100 * row['overhead']:+.1f}%), identical tokens: {same}", flush=True)
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    m = report["model"]
    lines = [
        f"# GPU benchmark: {m['name']} ({m['parameters'] / 1e9:.2f}B parameters, random weights, {m['dtype']}) "
        f"on {report['device']}",
        "",
        f"Prompt length {report['settings']['prompt_length']} (ragged: row i is 3i shorter), block length "
        f"{report['settings']['block_length']}, {report['settings']['tokens_per_step']} token(s) per step for the "
        "baseline. Metrics as docs/metrics.md defines them, with every response position an answer token "
        "(random weights write no end-of-text): tokens/s = batch x gen length / wall seconds; NFE = forwards of "
        "the batch (cache refreshes "
        "included); positions = token positions the model processed; speedup = baseline seconds / seconds at "
        "the same gen length and batch.",
        "",
        "| strategy | gen | batch | NFE | NFE/row | positions | s | tokens/s | speedup | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        peak = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "-"
        lines.append(f"| {r['strategy']} | {r['gen_length']} | {r['batch']} | {r['nfe']} | {r['nfe_per_row']:.1f} | "
                     f"{r['positions']} | {r['seconds']:.3f} | {r['tokens_per_second']:.1f} | {speed} | {peak} |")
    if report["skipped"]:
        reasons: dict[str, list[str]] = {}
        for s in report["skipped"]:
            names = reasons.setdefault(s["reason"], [])
            if s["strategy"] not in names:
                names.append(s["strategy"])
        lines += ["", "Skipped (every gen length and batch listed in the JSON):", ""]
        lines += [f"- {', '.join(names)}: {reason}" for reason, names in reasons.items()]
    if report["overhead"]:
        lines += ["", "Plugin loop overhead over the plain reference loop (LLaDA low-confidence, 1 token/step):", "",
                  "| batch | gen | plain loop (s) | plugin loop (s) | overhead | identical |",
                  "|---|---|---|---|---|---|"]
        for o in report["overhead"]:
            lines.append(f"| {o['batch']} | {o['gen_length']} | {o['plain_s']:.3f} | {o['plugin_s']:.3f} | "
                         f"{100 * o['overhead']:+.1f}% | {o['identical_tokens']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dllm_harness.bench_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="llada-8b")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--gen-lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--tokens-per-step", type=int, default=1, help="the baseline's fixed tokens per step")
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--with", dest="extras", nargs="*", default=[], metavar="SPEC",
                        help="extra specs combined with every base and cache, e.g. eot learned_filter")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per cell (median reported)")
    parser.add_argument("--overhead-repeats", type=int, default=3, help="0 skips the overhead measurement")
    parser.add_argument("--overhead-gen-length", type=int, default=None, help="default: the first gen length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="folder for bench_gpu.json and bench_gpu.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu --size tiny")
    if min(args.gen_lengths + args.batches + [args.block_length, args.tokens_per_step, args.prompt_length]) < 1 \
            or args.repeats < 1 or args.overhead_repeats < 0:
        parser.error("lengths, batches, block length, tokens per step, prompt length and repeats must be positive")
    for g in args.gen_lengths:
        block = min(args.block_length, g)
        if g % block or block % args.tokens_per_step:
            parser.error(f"gen length {g} must be a multiple of the block length {block}, and the block length a "
                         f"multiple of --tokens-per-step {args.tokens_per_step}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    size = SIZES[args.size]
    model = build_model(size, device, dtype, seed=args.seed)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": {"name": model.name, "size": args.size,
                  "parameters": sum(p.numel() for p in model.module.parameters()),
                  "dtype": str(dtype).removeprefix("torch."), **attrs.asdict(size)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": [], "skipped": [], "overhead": [],
    }

    def save() -> None:
        if args.output is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            (args.output / "bench_gpu.json").write_text(json.dumps(report, indent=1))
            (args.output / "bench_gpu.md").write_text(markdown(report))

    print(f"{model.name}: {report['model']['parameters'] / 1e9:.2f}B parameters, {report['model']['dtype']}, "
          f"on {report['device']}", flush=True)
    with torch.inference_mode():
        run_matrix(model, size, args, device, report, save)
        if args.overhead_repeats:
            report["overhead"] = measure_overhead(model, size, args, device)
    save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
