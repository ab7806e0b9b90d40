"""Registration plugin of the synthetic arithmetic task: the shipped ``default`` model, the
``arith`` task (the bench's and the lm-eval local tasks' problems), its long-answer variant
``arith-long`` with its own model ``long-answer``, and the ``train`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dllm_arith import task as arith_task
from dllm_strategies import hookimpl
from dllm_strategies.cli import non_negative_int, positive_int, quiet_option
from dllm_strategies.errors import ConfigError
from dllm_strategies.progress import StatusLine

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"
LONG_ANSWER_MODEL_DIR = Path(__file__).parent / "assets" / "long-answer"


@hookimpl
def dllm_models(register) -> None:
    register("default", DEFAULT_MODEL_DIR, strategy=None,
             description="6-layer d=128 LLaDA-style model trained on the synthetic arithmetic task")
    register("long-answer", LONG_ANSWER_MODEL_DIR, strategy=None,
             description="the default model trained further on the task 'arith-long' (answers of 3 or 4 "
                         "blocks of 32; decode at gen 128 or more)")


@hookimpl
def dllm_tasks(register) -> None:
    for variant in arith_task.VARIANTS.values():  # arith and arith-long
        register(variant.name, variant)


@hookimpl
def dllm_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a LLaDA-style model on the synthetic task (the default model's recipe)",
        description="Masked-diffusion SFT (LLaDA) of a bidirectional Llama on the synthetic arithmetic task. "
                    "Resumes from OUTPUT/work/checkpoint.pt when present.")
    p.add_argument("--output", required=True, help="directory for the checkpoint (resumable)")
    p.add_argument("--steps", type=positive_int, default=3000,
                   help="optimiser steps of the whole run; the cosine schedule spans them (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="samples per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1.5e-3,
                   help="peak learning rate (AdamW), after 100 warm-up steps, cosine to 10%% (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the data, the initialisation and the masks (default: %(default)s)")
    p.add_argument("--train-size", type=positive_int, default=400_000,
                   help="training problems generated (default: %(default)s)")
    p.add_argument("--eval-every", type=positive_int, default=200,
                   help="steps between validation records (default: %(default)s)")
    p.add_argument("--save-every", type=positive_int, default=50,
                   help="steps between resumable checkpoints (default: %(default)s)")
    p.add_argument("--eval-problems", type=non_negative_int, default=128,
                   help="validation problems decoded at each validation record; 0: none (default: %(default)s)")
    p.add_argument("--gen-lengths", type=_int_list, default=(64, 256),
                   help="response pad lengths, one drawn per batch (default: 64,256)")
    p.add_argument("--gen-length-weights", type=_float_list, default=(0.85, 0.15),
                   help="the weight each gen length is drawn with (default: 0.85,0.15)")
    p.add_argument("--eot-crop", type=float, default=0.0, metavar="P",
                   help="probability that a sample's canvas ends after a random part of its end-of-text tail "
                        "(what End-of-Text truncation leaves the model); 0 never crops (default: %(default)s)")
    p.add_argument("--hidden-size", type=positive_int, default=128, help="model width (default: %(default)s)")
    p.add_argument("--layers", type=positive_int, default=6, help="transformer blocks (default: %(default)s)")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads (default: %(default)s)")
    p.add_argument("--intermediate-size", type=positive_int, default=384, help="MLP width (default: %(default)s)")
    arith_task.add_difficulty_arguments(p)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    quiet_option(p)
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (a directory written by train) instead of a random "
                        "initialisation: a further stage with its own schedule")
    p.add_argument("--export", action="store_true",
                   help="do not train: write the run's latest checkpoint (OUTPUT/work) as a standard checkpoint "
                        "in OUTPUT (same options as the run)")
    p.set_defaults(func=_train)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 64,256; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, e.g. 64,256; got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.85,0.15; got {text!r}") from None
    if not values or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated weights >= 0 with a positive sum; got {text!r}")
    return values


def _train(args: argparse.Namespace) -> int:
    # Heavy modules load when the command runs, not at every CLI start.
    import torch

    from dllm_arith import task
    from dllm_arith.evaluate import accuracy
    from dllm_arith.recipe import ModelShape, export_checkpoint, train_default
    from dllm_arith.sft import TrainConfig
    from dllm_arith.tokenizer import build_tokenizer
    from dllm_strategies.models.loading import registered_or_local_dir, wrap_module

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        difficulty = task.difficulty_from_args(args)
    except ValueError as exc:
        raise ConfigError(f"train: bad task difficulty: {exc}") from exc
    if len(args.gen_lengths) != len(args.gen_length_weights):
        raise ConfigError(f"--gen-length-weights gives {len(args.gen_length_weights)} weight(s) for "
                          f"{len(args.gen_lengths)} --gen-lengths; give one weight per gen length")
    try:  # TrainConfig's own validators name a bad value (--eot-crop outside 0..1)
        config = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
            save_every=args.save_every, gen_lengths=args.gen_lengths, gen_length_weights=args.gen_length_weights,
            eot_crop=args.eot_crop,
        )
    except ValueError as exc:
        raise ConfigError(f"train: {exc}") from exc
    shape = ModelShape(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads)
    if args.init_from is not None and not Path(args.init_from).is_dir():
        source = registered_or_local_dir(args.init_from)
        if source is None:
            raise ConfigError(f"--init-from {args.init_from!r}: neither a checkpoint directory nor a registered model")
        args.init_from = str(source)
    if args.export:
        step = export_checkpoint(args.output, train_size=args.train_size, difficulty=difficulty, shape=shape,
                                 config=config, init_from=args.init_from)
        print(f"exported step {step} of {config.steps} to {args.output}")
        return 0
    held_out = list(task.generate(args.eval_problems, seed=args.seed + 99, difficulty=difficulty,
                                  exclude=task.held_out_questions()))
    tok_holder = {}
    # the shortest length the recipe trains at: the default's 64, the long-answer variant's 128
    # (its solutions do not fit 64 tokens, so a 64-token decode would score nothing)
    eval_gen = min(config.gen_lengths)
    eval_block = 32 if eval_gen % 32 == 0 else eval_gen

    def evaluate(module, step: int) -> dict:
        if "tok" not in tok_holder:
            tok_holder["tok"] = build_tokenizer()
        model = wrap_module(module, tok_holder["tok"], name=f"step-{step}")
        out: dict = {"eval_gen_length": eval_gen}
        for per_step in (1, 4):
            out[f"acc@{per_step}"] = accuracy(model, held_out, gen_length=eval_gen, block_length=eval_block,
                                              steps=eval_gen // per_step)["accuracy"]
        return out

    # a status line while the data is built (minutes at the default 400,000 problems), then the training bar
    with StatusLine("train", disable=True if args.quiet else None) as status:
        train_default(args.output, train_size=args.train_size, difficulty=difficulty, shape=shape, config=config,
                      evaluate=evaluate if args.eval_problems else None, progress=not args.quiet,
                      log=lambda r: print(json.dumps(r), flush=True), init_from=args.init_from, status=status)
    print(f"saved {args.output}")
    return 0
