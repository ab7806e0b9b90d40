"""``dllm-strategies``: list plugins, decode prompts, and the commands plugins add
(``train``, ``eval``, ``bench``, ``distill``, ...) through the ``dllm_commands`` hook."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dllm_strategies import discovery
from dllm_strategies.decode import decode
from dllm_strategies.errors import DllmError
from dllm_strategies.models import load_model
from dllm_strategies.options import option_fields
from dllm_strategies.plugin import DECLARATIONS, declared, implemented_hooks
from dllm_strategies.progress import DecodeProgress
from dllm_strategies.state import check_lengths
from dllm_strategies.strategy import Strategy


# ------------------------------------------------------------------------------------------
# Option types shared by every command (argparse reports a bad value in one line, before any work)
# ------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An integer >= 1 (0 is never "the default": leave the option out for that)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value} (leave the option out for its "
                                         "default)")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def device_name(text: str) -> str:
    """A torch device string (cpu, cuda, cuda:1, mps...), checked before a model loads."""
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps") from None
    return text


def quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or status lines (they are also off when stderr is not a terminal)")


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """A warning as one line, ``warning: ...`` (no source path and code line in a command's output)."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def run_command(command: Callable[[], int]) -> int:
    """Run a command the way every entry point does: a :class:`DllmError` or an ``OSError`` (a
    missing file) ends it with one ``error:`` line, Ctrl-C with ``interrupted`` and exit 130
    (the shell's code for SIGINT), warnings print as ``warning:`` lines."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(command() or 0)
        except DllmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130


def _plugins_table() -> list[dict[str, Any]]:
    rows = []
    for name, (info, target) in discovery.strategy_plugins().items():
        rows.append({
            "name": name, "kind": "strategy", "distribution": info.distribution, "version": info.version,
            "target": info.target, "options": option_fields(target), "hooks": implemented_hooks(target),
            **{d: declared(target, d) for d in DECLARATIONS},
            "summary": (target.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
        })
    for name, entry in discovery.installed_models().items():
        rows.append({"name": name, "kind": "model", "distribution": entry["source"], "path": str(entry["path"]),
                     "strategy": entry["strategy"], "summary": entry["description"]})
    for name, task in discovery.installed_tasks().items():
        rows.append({"name": name, "kind": "task", "summary": (task.__doc__ or "").strip().split("\n")[0]})
    return rows


def _facts(row: dict[str, Any]) -> str:
    """The declarations a user must know about: what breaks a default promise."""
    facts = [f for f in ("revocable", "stochastic") if row[f]]
    facts += [] if row["batch_invariant"] else ["batch-dependent"]
    facts += [] if row["supports_fake_models"] else ["needs a real model"]
    return f" [{', '.join(facts)}]" if facts else ""


def cmd_plugins(args: argparse.Namespace) -> int:
    rows = _plugins_table()
    failed = discovery.broken()
    if args.json:
        rows += [{"name": info.name, "kind": "broken", "distribution": info.distribution, "error": str(exc)}
                 for info, exc in failed]
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'name':<20} {'kind':<9} {'distribution':<22} {'hooks / path':<40} options")
    for row in rows:
        if row["kind"] == "strategy":
            options = (", ".join(f"{o['name']}={o['default']!r}" for o in row["options"]) or "-") + _facts(row)
            where = ",".join(h.removeprefix("dllm_") for h in row["hooks"])
        elif row["kind"] == "model":
            options, where = f"strategy: {row['strategy'] or 'default'}", row["path"]
        else:
            row["distribution"], options, where = "", "-", row["summary"]
        print(f"{row['name']:<20} {row['kind']:<9} {row['distribution']:<22} {where:<40} {options}")
    for info, exc in failed:
        print(f"warning: {exc}", file=sys.stderr)
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.file:
        try:
            text = Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DllmError(f"--file {args.file!r}: {reason}; give a text file (one prompt per line) or a "
                            ".jsonl file") from exc
        if args.file.endswith(".jsonl"):
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    prompts.append(_jsonl_prompt(args.file, number, line))
        else:
            prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DllmError("no prompts: pass them as arguments or with --file")
    return prompts


def _jsonl_prompt(path: str, number: int, line: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DllmError(f"--file {path!r} line {number} is not JSON ({exc.msg}); write one JSON object per line") \
            from exc
    text = (row.get("prompt") or row.get("question") or row.get("text")) if isinstance(row, dict) else None
    if not isinstance(text, str):
        raise DllmError(f"--file {path!r} line {number} has no 'prompt', 'question' or 'text' string")
    return text


def cmd_generate(args: argparse.Namespace) -> int:
    decoding = discovery.recommended_decoding(args.model, strategy=args.strategy, block_length=args.block_length,
                                              gen_length=args.gen_length)
    spec, block_length = decoding.strategy, decoding.block_length
    if args.temperature < 0:
        raise DllmError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if args.temperature > 0:
        spec = f"{spec}+gumbel(temperature={args.temperature})" if spec else f"gumbel(temperature={args.temperature})"
    # every check before the model loads: the spec (parsed once for every batch), the lengths, the prompts
    strategy = Strategy.parse(spec)
    check_lengths(args.gen_length, block_length, args.steps)
    prompts = _read_prompts(args)
    model = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    own = discovery.loaded_decoding(decoding, model, strategy=args.strategy, block_length=args.block_length)
    if own != decoding:  # a block-diffusion model's own strategy or block, where nothing else chose
        block_length = own.block_length
        spec = f"{own.strategy}+gumbel(temperature={args.temperature})" if args.temperature > 0 else own.strategy
        strategy = Strategy.parse(spec)
    results = []
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    with torch.inference_mode(), DecodeProgress(total=len(prompts) * args.gen_length, desc="generate",
                                                disable=True if args.quiet else None) as progress:
        strategy = progress.track(strategy)
        for batch in batches:
            result = decode(model, batch, strategy=strategy, gen_length=args.gen_length,
                            block_length=block_length, steps=args.steps, seed=args.seed, chat=not args.raw)
            for i, text in enumerate(result.text):
                # encoder forwards: a block-diffusion model's cache writes for the whole batch, not NFE
                row = {"prompt": batch[i], "text": text, "steps": int(result.steps[i]), "nfe": int(result.nfe[i]),
                       "tokens": int(result.answer_length[i]), "encoder_forwards": int(result.encoder_forwards)}
                results.append(row)
            seconds = result.wall_time
            generated = sum(r["tokens"] for r in results[-len(batch):])
            if not args.json:
                progress.finish_run()
                for row in results[-len(batch):]:
                    encoder = f", {row['encoder_forwards']} encoder passes" if row["encoder_forwards"] else ""
                    progress.write(f"> {row['prompt']}\n{row['text']}\n  [steps {row['steps']}, NFE {row['nfe']}"
                                   f"{encoder}, {row['tokens']} tokens]")
                progress.write(f"  batch of {len(batch)}: {seconds:.2f} s, {generated / max(seconds, 1e-9):.1f} "
                               f"tokens/s (strategy: {spec or 'default (LLaDA low-confidence)'})")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


BUILTIN_COMMANDS = ("plugins", "generate")


def build_parser(plugin_commands: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser; ``plugin_commands=False`` leaves out the commands plugins add (so a built-in
    command never imports them)."""
    parser = argparse.ArgumentParser(prog="dllm-strategies", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed strategy plugins and models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    g = sub.add_parser("generate", help="decode prompts with a model and a strategy")
    g.add_argument("prompt", nargs="*", help="prompt texts")
    g.add_argument("--file", help="a text file (one prompt per line) or a .jsonl file whose rows have 'prompt', "
                                  "'question' or 'text'")
    g.add_argument("--model", default="default",
                   help="registered name, local checkpoint directory or hub id (default: default)")
    g.add_argument("--strategy", default=None,
                   help="spec, e.g. 'threshold(tau=0.9)+eot' (default: the model's recommended one, else LLaDA "
                        "low-confidence)")
    g.add_argument("--gen-length", "--gen_length", dest="gen_length", type=positive_int, default=64,
                   help="response positions decoded per prompt (default: 64)")
    g.add_argument("--block-length", "--block_length", dest="block_length", type=positive_int, default=None,
                   help="semi-autoregressive block width (default: the model's recommended one, else 32, capped at "
                        "the gen length)")
    g.add_argument("--steps", type=positive_int, default=None,
                   help="schedule steps (default: the gen length, one token per step)")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="> 0 samples with gumbel(temperature=...) (default: 0, greedy)")
    g.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of every random choice of decoding (default: 0)")
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=16,
                   help="prompts decoded together (default: 16)")
    g.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda, cuda:N... (default: cuda when available, else cpu)")
    g.add_argument("--dtype", default="auto",
                   help="auto (default: bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16")
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.add_argument("--trust-remote-code", "--trust_remote_code", dest="trust_remote_code", action="store_true",
                   help="allow a hub checkpoint's own modelling code (for families not supported natively)")
    g.add_argument("--json", action="store_true",
                   help="print one JSON list of {prompt, text, steps, nfe, tokens, encoder_forwards} instead of text")
    quiet_option(g)
    g.set_defaults(func=cmd_generate)

    if plugin_commands:
        discovery.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    def command() -> int:
        words = sys.argv[1:] if argv is None else argv
        builtin = bool(words) and words[0] in BUILTIN_COMMANDS
        args = build_parser(plugin_commands=not builtin).parse_args(words)
        return args.func(args)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
