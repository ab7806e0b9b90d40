"""Block-diffusion benchmark: both families, on models built from a config with random weights.

* **DiffusionGemma**: our decode with the model's recommended strategy against transformers' own
  ``model.generate()``, side by side in one run, on the same prompts with the same seed: wall
  time of each (median of ``--repeats`` alternating runs after an untimed warm-up of each; the
  ratio is the median of the back-to-back pairs' ratios), whether
  the tokens are identical and whether our NFE equals generate's decoder passes; and each loop's
  own cost per decoder pass at batch 1, the decoder's recorded outputs replayed to both (the
  model's cost removed: what is left of the gap).
* **Masked block diffusion** (SDAR's architecture, and Fast-dLLM v2's token shift): our decode
  with the exact cache against the same strategy through the uncached block-causal forward (the
  whole sequence every step), greedy, so the tokens must agree; wall time, NFE and cache writes.

Random weights decode meaningless text; the comparison is of cost and of sameness.  Sizes:
``tiny`` runs on a CPU in seconds (the test suite runs it), ``base`` in a minute or two;
``small`` is GPU-sized.

    python -m dllm_harness.bench_block --device cpu --size tiny --output /tmp/bench_block
    python -m dllm_harness.bench_block --device cuda --size small --output bench/block
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from dllm_strategies import Plugin, Strategy, decode, hookimpl
from dllm_strategies.defaults import full_forward
from dllm_strategies.errors import DllmError
from dllm_strategies.models.block_causal import tiny_block_causal
from dllm_strategies.models.diffusion_gemma import Generation, tiny_diffusion_gemma

GREEDY_BLOCK_STRATEGIES = ("confidence_dynamic(tau=0.85)", "threshold(tau=0.9)")


@attrs.frozen
class Size:
    """Shapes of the two random models of one benchmark size."""

    dg_hidden: int
    dg_layers: int
    canvas: int
    denoising_steps: int
    block_hidden: int
    block_layers: int
    block_length: int


SIZES = {
    "tiny": Size(dg_hidden=64, dg_layers=2, canvas=16, denoising_steps=16, block_hidden=64, block_layers=2,
                 block_length=4),
    # Still CPU-sized: a forward long enough that a fixed per-step overhead weighs less.
    "base": Size(dg_hidden=256, dg_layers=4, canvas=32, denoising_steps=16, block_hidden=256, block_layers=4,
                 block_length=8),
    "small": Size(dg_hidden=1024, dg_layers=8, canvas=256, denoising_steps=48, block_hidden=1024, block_layers=12,
                  block_length=32),
}


class Uncached(Plugin):
    """The core's uncached forward: the whole sequence every step, under the block-causal mask."""

    name = "uncached"

    @hookimpl
    def dllm_forward(self, model, state, plan):
        return full_forward(model, state)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def loop_costs(module: torch.nn.Module, loops: dict[str, Callable[[], Any]], repeats: int,
               device: torch.device) -> dict[str, float]:
    """Seconds per decoder pass that each decode loop spends beside the decoder: the decoder's
    outputs of one run of the first loop are recorded, then every loop runs ``repeats`` times
    (alternating) on those outputs replayed in order, so only the loops' own work (and the
    encoder passes) is timed.  Meaningful only for loops that make the same calls (same tokens)."""
    original = module.forward
    record: list = []
    cursor = [0]

    def recording(*args: Any, **kwargs: Any) -> Any:
        record.append(original(*args, **kwargs))
        return record[-1]

    def replaying(*args: Any, **kwargs: Any) -> Any:
        cursor[0] += 1
        return record[cursor[0] - 1]

    times: dict[str, list[float]] = {name: [] for name in loops}
    module.forward = recording
    try:
        next(iter(loops.values()))()
        module.forward = replaying
        for _ in range(repeats):
            for name, loop in loops.items():
                cursor[0] = 0
                times[name].append(timed(loop, device)[1] / len(record))
                if cursor[0] != len(record):
                    raise DllmError(f"the {name} loop made {cursor[0]} decoder passes where the recorded run made "
                                    f"{len(record)}: the loops do not decode the same way")
    finally:
        del module.forward  # the class's forward again
    return {name: statistics.median(ts) for name, ts in times.items()}


def prompts(vocab: int, batch: int, seed: int) -> list[list[int]]:
    """Left-padded prompts of different lengths (ids 3..vocab-1: no special token of the tiny tokenizer)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(7, vocab, (5 + 3 * i,), generator=g).tolist() for i in range(batch)]


def padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, mask


def diffusion_gemma_rows(size: Size, args: argparse.Namespace, device: torch.device) -> list[dict]:
    generation = Generation(max_denoising_steps=args.denoising_steps or size.denoising_steps)
    model = tiny_diffusion_gemma(hidden_size=size.dg_hidden, num_layers=size.dg_layers, canvas_length=size.canvas,
                                 sharpness=30.0, seed=args.seed, generation=generation,
                                 dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
    model.module.to(device)
    strategy = Strategy.parse(model.recommended_strategy)
    rows = []
    for batch in args.batches:
        ids, mask = padded(prompts(model.vocab_size, batch, args.seed), model.fill_id)
        ids, mask = ids.to(device), mask.to(device)
        new = args.canvases * model.block_length

        def theirs():
            torch.manual_seed(args.seed)
            out = model.module.generate(ids, attention_mask=mask, max_new_tokens=new,
                                        max_denoising_steps=generation.max_denoising_steps, t_min=generation.t_min,
                                        t_max=generation.t_max, stability_threshold=generation.stability_threshold,
                                        confidence_threshold=generation.confidence_threshold,
                                        eos_token_id=list(model.eot_ids), pad_token_id=model.fill_id)
            return out

        def ours():
            return decode(model, ids, prompt_mask=mask, strategy=strategy, gen_length=new, seed=args.seed)

        theirs(), ours()  # untimed warm-up of both
        their_times, our_times = [], []
        for _ in range(args.repeats):  # alternating, so both see the same machine
            generated, t = timed(theirs, device)
            their_times.append(t)
            result, t = timed(ours, device)
            our_times.append(t)
        tokens = generated.sequences[:, ids.shape[1]:]
        tokens = torch.nn.functional.pad(tokens, (0, new - tokens.shape[1]), value=model.fill_id)
        valid = (tokens != model.fill_id).sum(1)
        passes = torch.round(valid / generated.tokens_per_forward).long()
        mine, theirs_median = statistics.median(our_times), statistics.median(their_times)
        # each pair ran back to back: the median of the pairs' ratios is robust to a machine whose
        # speed drifts over the run (a shared VM), where the ratio of two medians is not
        paired = statistics.median(o / t for o, t in zip(our_times, their_times, strict=True))
        # one row only: with more, our decoder runs the rows still denoising where generate runs
        # all of them, so the recorded passes do not fit our calls
        loops = loop_costs(model.module, {"generate": theirs, "ours": ours}, args.repeats, device) \
            if batch == 1 else {"generate": None, "ours": None}
        rows.append({
            "family": "DiffusionGemma", "batch": batch, "gen_length": new, "canvas": model.block_length,
            "denoising_steps": generation.max_denoising_steps, "generate_s": theirs_median, "ours_s": mine,
            "ratio": paired, "ratio_of_medians": mine / theirs_median, "same_tokens": bool(torch.equal(tokens.cpu(), result.tokens.cpu())),
            "same_nfe": bool(torch.equal(passes.cpu(), result.nfe.cpu())), "nfe": result.nfe.tolist(),
            "encoder_forwards": result.encoder_forwards, "generate_runs_s": their_times, "ours_runs_s": our_times,
            **{f"{name}_loop_ms_per_pass": None if cost is None else cost * 1e3 for name, cost in loops.items()},
        })
    return rows


def block_causal_rows(size: Size, args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for shifted in (False, True):
        model = tiny_block_causal(hidden_size=size.block_hidden, num_layers=size.block_layers, shifted=shifted,
                                  block_length=size.block_length, seed=args.seed,
                                  dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
        model.module.to(device)
        gen_length = args.canvases * size.block_length * 2
        for spec in args.block_strategies:
            for batch in args.batches:
                batch_prompts = prompts(model.vocab_size, batch, args.seed)

                def run(extra):
                    return decode(model, batch_prompts, strategy=[*extra, spec], gen_length=gen_length,
                                  seed=args.seed)

                run([]), run([Uncached])
                cached, t_cached = timed(lambda: run([]), device)
                uncached, t_uncached = timed(lambda: run([Uncached]), device)
                rows.append({
                    "family": "Fast-dLLM v2 shape" if shifted else "SDAR shape", "strategy": spec, "batch": batch,
                    "gen_length": gen_length, "block_length": size.block_length, "exact_cache_s": t_cached,
                    "uncached_s": t_uncached, "speedup": t_uncached / t_cached,
                    "same_tokens": bool(torch.equal(cached.tokens, uncached.tokens)), "nfe": cached.nfe.tolist(),
                    "cache_writes": cached.encoder_forwards,
                })
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Block-diffusion benchmark ({s['size']}, {s['device']}, {s['torch_threads']} threads)", "",
             "## DiffusionGemma: our decode vs transformers' generate(), same prompts and seed", "",
             "| batch | gen length | steps/canvas | generate() s | ours s | ours / generate | same tokens | "
             "NFE = decoder passes | loop ms/pass: generate() | loop ms/pass: ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["diffusion_gemma"]:
        lines.append(f"| {r['batch']} | {r['gen_length']} | {r['denoising_steps']} | {r['generate_s']:.3f} | "
                     f"{r['ours_s']:.3f} | {r['ratio']:.2f} | {r['same_tokens']} | {r['same_nfe']} | "
                     f"{_ms(r['generate_loop_ms_per_pass'])} | {_ms(r['ours_loop_ms_per_pass'])} |")
    lines += ["", "Loop ms/pass: each loop's time per decoder pass beside the decoder, the decoder's outputs "
              "replayed (encoder passes included); batch 1 only (with more rows our decoder runs only the rows "
              "still denoising, generate all of them)."]
    lines += ["", "## Masked block diffusion: exact cache vs the uncached block-causal forward", "",
              "| model | strategy | batch | gen length | exact cache s | uncached s | speedup | same tokens | "
              "cache writes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["block_causal"]:
        lines.append(f"| {r['family']} | `{r['strategy']}` | {r['batch']} | {r['gen_length']} | "
                     f"{r['exact_cache_s']:.3f} | {r['uncached_s']:.3f} | {r['speedup']:.2f} | {r['same_tokens']} | "
                     f"{r['cache_writes']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dllm_harness.bench_block", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--canvases", type=int, default=4, help="DiffusionGemma canvases (twice as many masked blocks)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--denoising-steps", type=int, default=None,
                   help="DiffusionGemma steps per canvas (default: the size's)")
    p.add_argument("--block-strategies", nargs="+", default=list(GREEDY_BLOCK_STRATEGIES),
                   help="greedy strategies for the block-causal models")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--output", required=True, help="directory for bench_block.json and bench_block.md")
    args = p.parse_args(argv)
    if min(args.batches + [args.canvases, args.repeats]) < 1:
        raise DllmError("--batches, --canvases and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DllmError("--device cuda was asked for but CUDA is not available; pass --device cpu")
    size = SIZES[args.size]
    with torch.inference_mode():
        report = {
            "settings": {"size": args.size, "device": str(device), "batches": args.batches, "canvases": args.canvases,
                         "repeats": args.repeats, "seed": args.seed, "torch_threads": torch.get_num_threads(),
                         "torch": torch.__version__, "platform": platform.platform(), "shape": attrs.asdict(size)},
            "diffusion_gemma": diffusion_gemma_rows(size, args, device),
            "block_causal": block_causal_rows(size, args, device),
        }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_block.json").write_text(json.dumps(report, indent=2))
    (out / "bench_block.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
