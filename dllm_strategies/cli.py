"""``dllm-strategies``: list plugins, decode prompts, and the commands plugins add
(``train``, ``eval``, ``bench``, ``distill``, ...) through the ``dllm_commands`` hook."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dllm_strategies.errors import DllmError


def _plugins_table() -> list[dict[str, Any]]:
    from dllm_strategies.registry import installed_models, option_fields, strategy_plugins

    rows = []
    for name, (info, cls) in strategy_plugins().items():
        hooks = sorted(h for h in dir(cls) if h.startswith("dllm_") and hasattr(getattr(cls, h), "dllm_strategies_impl"))
        rows.append({
            "name": name, "kind": "strategy", "distribution": info.distribution, "version": info.version,
            "target": info.target, "options": option_fields(cls), "hooks": hooks,
            "revocable": bool(getattr(cls, "revocable", False)),
            "summary": (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
        })
    for name, entry in installed_models().items():
        rows.append({"name": name, "kind": "model", "distribution": entry["source"], "path": str(entry["path"]),
                     "strategy": entry["strategy"], "summary": entry["description"]})
    return rows


def cmd_plugins(args: argparse.Namespace) -> int:
    rows = _plugins_table()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'name':<20} {'kind':<9} {'distribution':<22} {'hooks / path':<40} options")
    for row in rows:
        if row["kind"] == "strategy":
            options = ", ".join(f"{o['name']}={o['default']!r}" for o in row["options"]) or "-"
            where = ",".join(h.removeprefix("dllm_") for h in row["hooks"])
        else:
            options, where = f"strategy: {row['strategy'] or 'default'}", row["path"]
        print(f"{row['name']:<20} {row['kind']:<9} {row['distribution']:<22} {where:<40} {options}")
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.file:
        text = Path(args.file).read_text()
        if args.file.endswith(".jsonl"):
            for line in text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    prompts.append(row.get("prompt") or row.get("question") or row["text"])
        else:
            prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DllmError("no prompts: pass them as arguments or with --file")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from dllm_strategies import decode, load_model
    from dllm_strategies.registry import build_strategy, installed_models

    recommended = installed_models().get(args.model) or {}
    spec = args.strategy if args.strategy is not None else recommended.get("strategy") or ""
    block_length = args.block_length or recommended.get("block_length") or min(32, args.gen_length)
    if args.temperature > 0:
        spec = f"{spec}+gumbel(temperature={args.temperature})" if spec else f"gumbel(temperature={args.temperature})"
    build_strategy(spec)  # fail fast on a bad spec, before any work
    prompts = _read_prompts(args)
    model = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    results = []
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="generate", disable=len(batches) < 2 or args.quiet, file=sys.stderr):
            result = decode(model, batch, strategy=spec, gen_length=args.gen_length,
                            block_length=block_length, steps=args.steps, seed=args.seed, chat=not args.raw)
            for i, text in enumerate(result.text):
                row = {"prompt": batch[i], "text": text, "steps": int(result.steps[i]), "nfe": int(result.nfe[i]),
                       "tokens": int((result.tokens[i] != model.fill_id).sum())}
                results.append(row)
            seconds = result.wall_time
            generated = sum(r["tokens"] for r in results[-len(batch):])
            if not args.json:
                for row in results[-len(batch):]:
                    print(f"> {row['prompt']}\n{row['text']}\n  [steps {row['steps']}, NFE {row['nfe']}, "
                          f"{row['tokens']} tokens]")
                print(f"  batch of {len(batch)}: {seconds:.2f} s, {generated / max(seconds, 1e-9):.1f} tokens/s "
                      f"(strategy: {spec or 'default (LLaDA low-confidence)'})")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dllm-strategies", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed strategy plugins and models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    g = sub.add_parser("generate", help="decode prompts with a model and a strategy")
    g.add_argument("prompt", nargs="*", help="prompt texts")
    g.add_argument("--file", help="a text file (one prompt per line) or jsonl with 'prompt'/'question'")
    g.add_argument("--model", default="default", help="registered name, local checkpoint or hub id")
    g.add_argument("--strategy", default=None, help="spec, e.g. 'threshold(tau=0.9)+eot' (default: the model's)")
    g.add_argument("--gen-length", type=int, default=64)
    g.add_argument("--block-length", type=int, default=None,
                   help="semi-AR block width (default: the model's recommended one, else 32)")
    g.add_argument("--steps", type=int, default=None, help="schedule steps (default: gen length)")
    g.add_argument("--temperature", type=float, default=0.0, help="> 0 adds gumbel(temperature=...)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--device", default=None)
    g.add_argument("--dtype", default="auto")
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.add_argument("--trust-remote-code", action="store_true")
    g.add_argument("--json", action="store_true")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    from dllm_strategies.registry import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except DllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
