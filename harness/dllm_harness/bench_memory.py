"""Peak memory of long, wide decodes: does the loop's memory stay flat over steps and runs?

Decodes a batch at a long gen length (1024 by default) with a random bidirectional Llama,
stepping the run by hand (:class:`dllm_strategies.decode.Run`) and sampling the process's
resident memory (RSS) after every step.  Reports RSS at the start, the peak, RSS after each
repeated run, RSS after the first and the last step of the last run, and the least-squares
growth of RSS per step over the second half of the last run (the first steps warm the
allocator up): a loop that kept per-step tensors alive would grow by about the state size
per step, and RSS after each run would climb.

    python -m dllm_harness.bench_memory [--batch 32] [--gen-length 1024] [--spec "topk(k=8)"] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json

import torch

from dllm_strategies import discovery
from dllm_strategies.decode import Run, encode_prompts
from dllm_strategies.models.tiny import tiny_model
from dllm_strategies.strategy import build_strategy
from dllm_strategies.state import DecodeConfig, DecodeState


def rss_mb() -> float:
    """Resident memory of this process in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _slope(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    x = torch.arange(n, dtype=torch.float64)
    y = torch.tensor(values, dtype=torch.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def measure(batch: int = 32, gen_length: int = 1024, block_length: int = 32, hidden: int = 64, layers: int = 2,
            spec: str = "topk(k=8)", repeats: int = 3, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model = tiny_model(hidden_size=hidden, num_layers=layers, num_heads=4, seed=0,
                       max_positions=gen_length + 128)
    questions = [p.question for p in discovery.task("arith").test_problems()[:batch]]
    questions += questions[: batch - len(questions)] if len(questions) < batch else []
    prompt, prompt_mask = encode_prompts(model, questions, chat=True)
    config = DecodeConfig.for_model(model, gen_length=gen_length, block_length=block_length)
    gc.collect()
    start = rss_mb()
    peak, per_run, trace = start, [], []
    steps = 0
    with torch.inference_mode():
        for _ in range(repeats):
            state = DecodeState.start(prompt, prompt_mask, config)
            run = Run.begin(build_strategy(spec), model, state)
            trace = []
            while not run.done:
                run.step()
                trace.append(rss_mb())
            steps = int(run.state.step)
            run.result()
            peak = max(peak, *trace)
            del run, state
            gc.collect()
            per_run.append(rss_mb())
    state_bytes = 8 * batch * gen_length * 4  # response, commit_step (+ masks) per step, int64
    return {
        "batch": batch, "gen_length": gen_length, "block_length": block_length, "spec": spec,
        "model": f"{layers} layers, d={hidden}", "steps": steps, "repeats": repeats,
        "start_rss_mb": round(start, 1), "peak_rss_mb": round(peak, 1),
        "rss_per_run_mb": [round(r, 1) for r in per_run],
        "rss_after_first_step_mb": round(trace[0], 1), "rss_after_last_step_mb": round(trace[-1], 1),
        # steady state: the second half of the last run (the first steps warm the allocator up)
        "rss_growth_per_step_kb": round(1024 * _slope(trace[len(trace) // 2:]), 2),
        "state_size_kb": round(state_bytes / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--gen-length", type=int, default=1024)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--spec", default="topk(k=8)", help="strategy (a fixed k keeps the step count known)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    report = measure(args.batch, args.gen_length, args.block_length, args.hidden, args.layers, args.spec,
                     args.repeats, args.threads)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
