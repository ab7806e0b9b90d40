"""``dllm-strategies distill``: the command line of certainty-forcing distillation.

``distill trajectories`` decodes training prompts with the teacher and saves the kept
trajectories; ``distill train`` distils a student from them and writes a standard
checkpoint.  See docs/distillation.md for the method, options and recipes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import attrs

from dllm_certainty_forcing.loss import DREAM_WEIGHT, LLADA_WEIGHT, TEMPERATURE
from dllm_certainty_forcing.training import LLAMA_PROJECTIONS
from dllm_strategies.errors import ConfigError

RECOMMENDED_STRATEGY = "entropy_threshold(tau=0.5)"
RECOMMENDED_BLOCK = 32


def add_distill_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="dParallel certainty-forcing distillation (arXiv 2509.26488): trajectories, then train",
        description="Certainty-forcing distillation (dParallel, arXiv 2509.26488). First 'distill trajectories' "
                    "decodes training prompts with the teacher and keeps the correct trajectories; then "
                    "'distill train' trains the student on them and writes a standard checkpoint.")
    sub = parser.add_subparsers(dest="distill_command", required=True)

    t = sub.add_parser("trajectories", help="decode training prompts with the teacher; keep the correct ones",
                       description="The teacher decodes training prompts with its standard decode (LLaDA "
                                   "low-confidence, one token per step); trajectories whose final answer is "
                                   "correct are saved as a datasets.Dataset (save_to_disk).")
    t.add_argument("--teacher", default="default", help="registered name, checkpoint directory or hub id")
    t.add_argument("--output", required=True, help="directory for the trajectories")
    t.add_argument("--problems", type=int, default=4096, help="synthetic-task training problems to decode")
    t.add_argument("--seed", type=int, default=1, help="seed of the synthetic problems")
    t.add_argument("--problems-file", default=None,
                   help="jsonl with 'question' and integer 'answer' per line, instead of synthetic problems")
    t.add_argument("--max-ops", type=int, default=None, help="synthetic difficulty (default: the teacher's)")
    t.add_argument("--max-operand", type=int, default=None)
    t.add_argument("--forms", type=int, default=None, choices=(0, 1, 2))
    t.add_argument("--gen-length", type=int, default=64, help="response length the teacher decodes")
    t.add_argument("--block-length", type=int, default=32, help="the teacher's semi-autoregressive block")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--raw", action="store_true", help="prompts without the chat template")
    t.add_argument("--keep", choices=("correct", "all"), default="correct",
                   help="'correct' (the method) or 'all' (smoke tests with untrained models only)")
    t.add_argument("--answer-pattern", default=None, help="regex whose first group is the final answer "
                                                          "(default: '#### <number>')")
    t.add_argument("--device", default=None)
    t.add_argument("--dtype", default="auto")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=run_trajectories)

    r = sub.add_parser("train", help="distil a student from saved trajectories",
                       description="Student initialised from the teacher; certainty-forcing loss over two "
                                   "complementary views of one active block; full fine-tuning or LoRA (merged on "
                                   "save). Resumes from OUTPUT/work/checkpoint.pt when present.")
    r.add_argument("--data", required=True, help="directory written by 'distill trajectories'")
    r.add_argument("--output", required=True, help="directory of the distilled checkpoint")
    r.add_argument("--teacher", default=None, help="the student's starting point (default: the data's teacher)")
    r.add_argument("--work-dir", default=None, help="resumable checkpoint and log (default: OUTPUT/work)")
    r.add_argument("--steps", type=int, default=None, help="optimiser steps (default: from --epochs)")
    r.add_argument("--epochs", type=float, default=6.0, help="passes over the trajectories (the paper: 6)")
    r.add_argument("--batch-size", type=int, default=64, help="samples per optimiser step (the paper: 64)")
    r.add_argument("--micro-batch-size", type=int, default=0, help="samples per forward (0: the whole batch)")
    r.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate, constant (the paper, LoRA: 2e-5)")
    r.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    r.add_argument("--weight-decay", type=float, default=0.01)
    r.add_argument("--grad-clip", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--pad-length", type=int, default=None,
                   help="training response length, end-of-text padded (default: 1.5x the teacher's gen length, "
                        "rounded up to the block: 64 -> 96, 256 -> 384)")
    r.add_argument("--block-length", type=int, default=32)
    r.add_argument("--mask-ratio", type=float, default=0.5)
    r.add_argument("--temperature", type=float, default=TEMPERATURE, help="of the certainty entropy")
    r.add_argument("--entropy-weight", type=float, default=None,
                   help=f"w (default: {LLADA_WEIGHT:g}, or {DREAM_WEIGHT:g} for Dream)")
    r.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning; else LoRA rank (the paper: 128)")
    r.add_argument("--lora-alpha", type=float, default=0.0, help="0: equal to the rank")
    r.add_argument("--lora-dropout", type=float, default=0.0)
    r.add_argument("--lora-targets", default=",".join(LLAMA_PROJECTIONS))
    r.add_argument("--gradient-checkpointing", action="store_true")
    r.add_argument("--device", default=None)
    r.add_argument("--dtype", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--save-every", type=int, default=50)
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--eval-every", type=int, default=0, help="decode held-out problems every N steps (0: never)")
    r.add_argument("--eval-problems", type=int, default=128)
    r.add_argument("--stop-at", type=int, default=None,
                   help="end this session after this many steps of the run (checkpointed; rerun to continue)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=run_train)


def teacher_directory(name: str) -> Path:
    """The checkpoint directory of a registered name, a local directory or a (cached) hub id."""
    from dllm_strategies.models import loading
    from dllm_strategies.registry import installed_models

    registered = installed_models()
    if name in registered:
        return Path(registered[name]["path"])
    return loading.local_dir(name)


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _difficulty(args: argparse.Namespace, teacher_dir: Path):
    from dllm_strategies.arith import task

    base: dict[str, Any] = {}
    recipe = teacher_dir / "training.json"
    if recipe.is_file():
        base = dict(json.loads(recipe.read_text()).get("difficulty") or {})
    for key in ("max_ops", "max_operand", "forms"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    try:
        return task.Difficulty(**base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad synthetic-task difficulty {base}: {exc}") from exc


def run_trajectories(args: argparse.Namespace) -> int:
    from dllm_certainty_forcing import trajectories as tr
    from dllm_strategies.arith import task
    from dllm_strategies.models import load_model

    _threads(args)
    options = {} if args.answer_pattern is None else {"answer_pattern": args.answer_pattern}
    config = tr.TrajectoryConfig(gen_length=args.gen_length, block_length=args.block_length,
                                 batch_size=args.batch_size, chat=not args.raw, keep=args.keep, **options)
    teacher_dir = teacher_directory(args.teacher)
    if args.problems_file:
        problems, source, difficulty = tr.read_problems(args.problems_file), str(args.problems_file), None
    else:
        if args.problems < 1:
            raise ConfigError(f"--problems={args.problems} must be at least 1")
        difficulty = _difficulty(args, teacher_dir)
        exclude = frozenset(p.question for p in task.test_problems())
        problems, source = list(task.generate(args.problems, args.seed, difficulty, exclude)), "arith"
    model = load_model(args.teacher, device=args.device, dtype=args.dtype)
    started = time.monotonic()
    table = tr.teacher_trajectories(model, problems, config, progress=not args.quiet)
    kept = tr.keep_rows(table, config.keep)
    correct = sum(table["correct"])
    metadata = {
        "teacher": args.teacher, "teacher_dir": str(teacher_dir.resolve()), "task": source, "seed": args.seed,
        "difficulty": attrs.asdict(difficulty) if difficulty is not None else None,
        "config": attrs.asdict(config), "decoded": len(table), "correct": correct,
        "teacher_accuracy": 100.0 * correct / len(table), "kept": len(kept),
        "seconds": round(time.monotonic() - started, 1),
    }
    tr.save_trajectories(kept, args.output, metadata)
    print(json.dumps({k: metadata[k] for k in ("decoded", "correct", "teacher_accuracy", "kept", "seconds")}))
    if len(kept) == 0:
        raise ConfigError(f"the teacher answered none of the {len(table)} problems correctly, so no trajectory "
                          f"was kept (saved an empty set in {args.output}); use a trained teacher")
    print(f"saved {len(kept)} trajectories to {args.output}")
    return 0


def default_pad_length(gen_length: int, block_length: int) -> int:
    """1.5x the teacher's generation length, rounded up to whole blocks (64 -> 96, 256 -> 384)."""
    return math.ceil(1.5 * gen_length / block_length) * block_length


def _evaluator(args: argparse.Namespace, metadata: dict, table):
    """Decode held-out synthetic problems with the recommended strategy (only for the synthetic task)."""
    if not args.eval_every or metadata.get("task") != "arith" or args.eval_problems < 1:
        return None
    from dllm_strategies.arith import task
    from dllm_strategies.arith.evaluate import accuracy

    difficulty = task.Difficulty(**metadata["difficulty"]) if metadata.get("difficulty") else task.Difficulty()
    exclude = frozenset(p.question for p in task.test_problems()) | frozenset(table["question"])
    held_out = list(task.generate(args.eval_problems, metadata.get("seed", 0) + 99, difficulty, exclude))
    gen_length = metadata["config"]["gen_length"]

    def evaluate(model, step: int) -> dict:
        out = accuracy(model, held_out, strategy=RECOMMENDED_STRATEGY, gen_length=gen_length,
                       block_length=min(RECOMMENDED_BLOCK, gen_length))
        return {"eval_accuracy": out["accuracy"], "eval_steps": out["steps"]}

    return evaluate


def _data_teacher(metadata: dict) -> str | None:
    """The teacher the trajectories came from: its registered name when it has one, else its directory."""
    from dllm_strategies.registry import installed_models

    name = metadata.get("teacher")
    if name and name in installed_models():
        return name
    return metadata.get("teacher_dir") or name


def run_train(args: argparse.Namespace) -> int:
    import sys

    from dllm_certainty_forcing import trajectories as tr
    from dllm_certainty_forcing.export import save_student
    from dllm_certainty_forcing.training import DistillConfig, distill
    from dllm_strategies.models import load_model

    _threads(args)
    table, metadata = tr.load_trajectories(args.data)
    teacher = args.teacher or _data_teacher(metadata)
    if not teacher:
        raise ConfigError(f"{args.data} does not name its teacher; pass --teacher")
    teacher_dir = teacher_directory(teacher)
    gen_length = int(metadata["config"]["gen_length"])
    pad_length = args.pad_length or default_pad_length(gen_length, args.block_length)
    pairs = tr.pairs(table)
    steps = args.steps if args.steps is not None else math.ceil(args.epochs * len(pairs) / args.batch_size)
    model = load_model(teacher, device=args.device, dtype=args.dtype)
    weight = args.entropy_weight
    if weight is None:
        weight = DREAM_WEIGHT if model.family.name == "dream" else LLADA_WEIGHT
    config = DistillConfig(
        steps=steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
        pad_length=pad_length, block_length=args.block_length, mask_ratio=args.mask_ratio,
        temperature=args.temperature, entropy_weight=weight, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=tuple(t for t in args.lora_targets.split(",") if t),
        gradient_checkpointing=args.gradient_checkpointing, save_every=args.save_every, log_every=args.log_every,
        eval_every=args.eval_every,
    )
    output = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else output / "work"
    outcome = distill(model, pairs, config=config, output_dir=work,
                      evaluate=_evaluator(args, metadata, table), progress=not args.quiet,
                      log=None if args.quiet else (lambda r: print(json.dumps(r), file=sys.stderr, flush=True)),
                      stop_at=args.stop_at)
    if not outcome.finished:
        print(f"stopped at step {outcome.step} of {config.steps}; run the same command again to continue")
        return 0
    save_student(model, output, source=teacher_dir)
    command = {k: v for k, v in vars(args).items() if k != "func"}
    (output / "distillation.json").write_text(json.dumps({
        "method": "dParallel certainty-forcing distillation (arXiv 2509.26488)",
        "teacher": str(teacher), "data": str(Path(args.data).resolve()), "data_metadata": metadata,
        "rows": len(pairs), "config": attrs.asdict(config), "command": command, "seconds": round(outcome.seconds, 1),
        "recommended": {"strategy": RECOMMENDED_STRATEGY, "block_length": RECOMMENDED_BLOCK},
        "records": outcome.records,
    }, indent=1))
    print(f"saved {output}")
    return 0
