"""``dllm-strategies train-filter``: a registration plugin (entry point naming this module)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from dllm_arith import task
from dllm_strategies.hookspecs import hookimpl


@hookimpl
def dllm_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "train-filter", help="train a Learn2PD filter (learned_filter) on a model's EGP-oracle labels",
        description="Learn2PD (arXiv 2509.25188): decode synthetic-task prompts with the EGP oracle against the "
                    "model's own 1-token-per-step decode, record per step the block's top-1 confidences and the "
                    "labels argmax == reference, then fit the MLP with BCE, AdamW and full batches. Writes OUTPUT "
                    "(.safetensors) and its .json; use it with learned_filter(path=OUTPUT).")
    p.add_argument("--model", default="default", help="registered name or checkpoint directory (default: default)")
    p.add_argument("--output", required=True, help="filter file to write, NAME.safetensors (NAME.json beside it)")
    p.add_argument("--gen-length", type=int, nargs="+", default=[64],
                   help="generation length(s) the labels are collected at (default: 64)")
    p.add_argument("--prompts", type=int, nargs="+", default=[1024],
                   help="training prompts, one count per --gen-length (default: 1024)")
    p.add_argument("--val-prompts", type=int, nargs="+", default=[128],
                   help="held-out prompts for the reported metrics, one count per --gen-length (default: 128)")
    p.add_argument("--block-length", type=int, default=32, help="block length = the filter's width")
    p.add_argument("--batch-size", type=int, default=64, help="prompts decoded together while collecting")
    p.add_argument("--epochs", type=int, default=20_000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--hidden", type=int, default=None, help="hidden width (default: the block length)")
    p.add_argument("--threshold", type=float, default=0.96, help="accept threshold stored with the filter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle-stall", choices=("argmax", "no_match"), default="argmax",
                   help="the oracle's stall rule (egp_oracle(stall=...)): argmax, the authors' (default), or "
                        "no_match, the rule the shipped filter was trained with")
    task.add_difficulty_arguments(p)
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_train_filter)


def _train_filter(args: argparse.Namespace) -> int:
    import torch

    from dllm_strategies import load_model
    from dllm_strategies.errors import ConfigError

    from dllm_learn2pd.training import FilterTraining, train_filter

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        difficulty = task.difficulty_from_args(args)
    except ValueError as exc:
        raise ConfigError(f"train-filter: bad task difficulty: {exc}") from exc
    config = FilterTraining(
        gen_lengths=args.gen_length, prompts=args.prompts, val_prompts=args.val_prompts,
        block_length=args.block_length, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, hidden=args.hidden, threshold=args.threshold, seed=args.seed,
        oracle_stall=args.oracle_stall, chat=not args.raw, difficulty=difficulty,
    )
    model = load_model(args.model, device=args.device)
    command = _command_line(args)
    facts = train_filter(model, args.output, config, model_name=args.model, command=command,
                         progress=not args.quiet, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({k: facts[k] for k in ("train", "validation") if k in facts}, indent=2))
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The full command that reproduces this run (every option spelled out)."""
    parts = ["dllm-strategies", "train-filter"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command", "quiet", "threads", "device") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            parts += [flag, *(shlex.quote(str(v)) for v in (value if isinstance(value, list) else [value]))]
    return " ".join(parts)
