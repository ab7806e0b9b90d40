"""Overhead of the plugin decode loop over a plain reference loop.

Both decode the same prompt with the same model (a random 4-layer d=256 bidirectional Llama
by default) with LLaDA's low-confidence semi-autoregressive algorithm: the plain loop is
``dllm_strategies.testing.reference.llada_reference``; the plugin loop is
``dllm_strategies.decode`` with the default strategy.  Runs alternate, the median of each
is reported, and the outputs are checked to be identical.

    python -m dllm_harness.bench_overhead [--batch 1] [--gen-length 64] [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dllm_strategies import decode, discovery
from dllm_strategies.decode import encode_prompts
from dllm_strategies.models.tiny import tiny_model
from dllm_strategies.strategy import build_strategy
from dllm_strategies.testing.reference import llada_reference


def measure(batch: int, gen_length: int, block_length: int, hidden: int, layers: int, repeats: int,
            threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model = tiny_model(hidden_size=hidden, num_layers=layers, num_heads=4, seed=0)
    questions = [p.question for p in discovery.task("arith").test_problems()[:batch]]
    ids, mask = encode_prompts(model, questions, chat=True)
    width = int(mask.sum(1).min())
    prompt = ids[:, -width:]  # equal lengths: the plain loop has no padding
    steps = gen_length

    def plain():
        return llada_reference(model.module, prompt, gen_length, block_length, steps, model.mask_id)

    def plugin():
        return decode(model, prompt, prompt_mask=torch.ones_like(prompt, dtype=torch.bool),
                      strategy=build_strategy(None), gen_length=gen_length, block_length=block_length,
                      steps=steps).tokens

    times = {"plain": [], "plugin": []}
    with torch.inference_mode():
        same = torch.equal(plain(), plugin())  # also the warm-up
        for _ in range(repeats):
            for name, fn in (("plain", plain), ("plugin", plugin)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    plain_s, plugin_s = statistics.median(times["plain"]), statistics.median(times["plugin"])
    return {"batch": batch, "gen_length": gen_length, "block_length": block_length, "steps": steps,
            "model": f"{layers} layers, d={hidden}", "repeats": repeats, "identical_tokens": same,
            "plain_s": plain_s, "plugin_s": plugin_s, "overhead": plugin_s / plain_s - 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = [measure(b, args.gen_length, args.block_length, args.hidden, args.layers, args.repeats, args.threads)
            for b in args.batch]
    print("| batch | model | gen | plain loop (s) | plugin loop (s) | overhead | identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['model']} | {r['gen_length']} | {r['plain_s']:.4f} | {r['plugin_s']:.4f} | "
              f"{100 * r['overhead']:+.1f}% | {r['identical_tokens']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
