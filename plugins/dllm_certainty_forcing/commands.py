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

from dllm_arith import task
from dllm_certainty_forcing.loss import DREAM_WEIGHT, LLADA_WEIGHT, TEMPERATURE
from dllm_certainty_forcing.masking import RATIO_DISTRIBUTIONS
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
                                   "correct are saved as a datasets.Dataset (save_to_disk). Each batch is kept "
                                   "in OUTPUT/parts as it is done: rerun the same command to continue.")
    t.add_argument("--teacher", default="default", help="registered name, checkpoint directory or hub id")
    t.add_argument("--output", required=True, help="directory for the trajectories")
    t.add_argument("--problems", type=int, default=4096, help="synthetic-task problems to decode")
    t.add_argument("--split", choices=("train", "validation"), default="train",
                   help="'train': synthetic training problems (never a test or validation question); "
                        "'validation': the first --problems of the validation split (for 'distill diagnose')")
    t.add_argument("--seed", type=int, default=1, help="seed of the synthetic training problems")
    t.add_argument("--problems-file", default=None,
                   help="jsonl with 'question' and integer 'answer' per line, instead of synthetic problems")
    task.add_difficulty_arguments(t, defaults=None)  # default: the teacher's recipe
    t.add_argument("--gen-length", type=int, default=256,
                   help="response length the teacher decodes: the length the student is judged at (256)")
    t.add_argument("--block-length", type=int, default=32, help="the teacher's semi-autoregressive block")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--from", dest="first", type=int, default=0, metavar="K",
                   help="a second worker: decode only the batches from problem K on (a multiple of "
                        "--batch-size) into OUTPUT/parts and save no set; the same command without --from, "
                        "run once every worker is done, reads every batch and saves the set")
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
    r.add_argument("--total-length", type=int, default=None,
                   help="prompt + response cut or padded with end-of-text to this many tokens, the authors' layout "
                        "(default: the longest prompt of the data + whole blocks for its longest answer, "
                        "at least 2)")
    r.add_argument("--pad-length", type=int, default=None,
                   help="instead, every response padded to this length after a left-padded prompt (earlier "
                        "versions' layout, not the authors')")
    r.add_argument("--block-length", type=int, default=32)
    r.add_argument("--mask-distribution", choices=RATIO_DISTRIBUTIONS, default="fixed",
                   help="first view's mask ratio of the active block: 'fixed' (--mask-ratio, the authors), or the "
                        "deviations 'uniform' (U(0,1)) and 'high' (Beta(--mask-skew, 1), towards fully masked)")
    r.add_argument("--mask-ratio", type=float, default=0.5, help="the fixed ratio (the authors: 0.5)")
    r.add_argument("--mask-skew", type=float, default=3.0, help="skew of 'high' (3: mean ratio 0.75)")
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

    d = sub.add_parser("diagnose", help="certainty diagnostic: the loss terms, argmax accuracy and entropy of a "
                                        "model on trajectories, by block kind and mask ratio",
                       description="For a model on teacher trajectories: dParallel's loss terms (CE, certainty "
                                   "entropy), argmax accuracy, mean entropy and the share below the entropy "
                                   "threshold, at masked positions of answer and tail blocks, for several mask "
                                   "ratios and at the states a decode actually visits (docs/distillation.md).")
    d.add_argument("--model", default="default", help="registered name or checkpoint directory")
    d.add_argument("--data", required=True, help="a 'distill trajectories' directory (e.g. --split validation)")
    d.add_argument("--rows", type=int, default=0, help="the first N trajectories (0: all)")
    d.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.9, 1.0], help="mask ratios of the block")
    d.add_argument("--blocks", type=int, default=0,
                   help="blocks per trajectory the ratio states measure, from the response start (0: all)")
    d.add_argument("--visited", default=RECOMMENDED_STRATEGY,
                   help="strategy whose visited states are replayed ('none': skip)")
    d.add_argument("--block-length", type=int, default=32)
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", default=None, help="also write the report as JSON to this file")
    d.add_argument("--device", default=None)
    d.add_argument("--dtype", default="auto")
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run_diagnose)


def teacher_directory(name: str) -> Path:
    """The checkpoint directory of a registered name, a local directory or a (cached) hub id."""
    from dllm_strategies.models import loading
    from dllm_strategies.discovery import installed_models

    registered = installed_models()
    if name in registered:
        return Path(registered[name]["path"])
    return loading.local_dir(name)


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _difficulty(args: argparse.Namespace, teacher_dir: Path):

    base: dict[str, Any] = {}
    recipe = teacher_dir / "training.json"
    if recipe.is_file():
        base = dict(json.loads(recipe.read_text()).get("difficulty") or {})
    try:
        return task.difficulty_from_args(args, base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad synthetic-task difficulty {base}: {exc}") from exc


def problem_set(args: argparse.Namespace, teacher_dir: Path):
    """``(problems, source, difficulty)`` the teacher decodes: a problems file, the synthetic task's
    validation split (``--split validation``: the first N of the set ``bench --problems
    validation`` scores, for the diagnostic), or synthetic training problems, which never hold a
    question of the test split nor of the validation split (models are chosen on it)."""
    from dllm_certainty_forcing import trajectories as tr

    if args.problems_file:
        return tr.read_problems(args.problems_file), str(args.problems_file), None
    if args.problems < 1:
        raise ConfigError(f"--problems={args.problems} must be at least 1")
    difficulty = _difficulty(args, teacher_dir)
    validation = task.validation_problems(difficulty=difficulty)
    if args.split == "validation":
        if args.problems > len(validation):
            raise ConfigError(f"--split validation has {len(validation)} problems; ask for at most that many")
        return validation[:args.problems], "arith-validation", difficulty
    exclude = task.held_out_questions() | {p.question for p in validation}
    return list(task.generate(args.problems, args.seed, difficulty, exclude)), "arith", difficulty


def run_trajectories(args: argparse.Namespace) -> int:
    from dllm_certainty_forcing import trajectories as tr
    from dllm_strategies.models import load_model

    _threads(args)
    options = {} if args.answer_pattern is None else {"answer_pattern": args.answer_pattern}
    config = tr.TrajectoryConfig(gen_length=args.gen_length, block_length=args.block_length,
                                 batch_size=args.batch_size, chat=not args.raw, keep=args.keep, **options)
    teacher_dir = teacher_directory(args.teacher)
    problems, source, difficulty = problem_set(args, teacher_dir)
    model = load_model(args.teacher, device=args.device, dtype=args.dtype)
    parts = Path(args.output) / tr.PARTS
    settings = {"teacher_weights": tr.weights_fingerprint(teacher_dir), "task": source, "seed": args.seed,
                "difficulty": attrs.asdict(difficulty) if difficulty is not None else None}
    table = tr.teacher_trajectories(model, problems, config, progress=not args.quiet, parts=parts,
                                    settings=settings, first=args.first)
    if args.first:
        print(f"decoded problems {args.first} to {len(problems) - 1} into {parts} ({sum(table['correct'])} of "
              f"{len(table)} right); run the same command without --from to save the whole set")
        return 0
    kept = tr.keep_rows(table, config.keep)
    correct = sum(table["correct"])
    metadata = {
        "teacher": args.teacher, "teacher_dir": str(teacher_dir.resolve()), **settings,
        "config": attrs.asdict(config), "decoded": len(table),
        "correct": correct, "teacher_accuracy": 100.0 * correct / len(table), "kept": len(kept),
        "seconds": tr.decode_seconds(parts),
    }
    tr.save_trajectories(kept, args.output, metadata)
    print(json.dumps({k: metadata[k] for k in ("decoded", "correct", "teacher_accuracy", "kept", "seconds")}))
    if len(kept) == 0:
        raise ConfigError(f"the teacher answered none of the {len(table)} problems correctly, so no trajectory "
                          f"was kept (saved an empty set in {args.output}); use a trained teacher")
    print(f"saved {len(kept)} trajectories to {args.output}")
    return 0


def default_total_length(pairs, block_length: int, stop_ids=()) -> int:
    """The longest prompt plus enough whole blocks for the longest answer, at least two: the
    authors' 384 tokens for LLaDA on GSM8K, scaled to the data (every answer of the default task
    fits two blocks and the student still sees a block or more of end-of-text tail; the long-answer
    variant's, up to 116 tokens, four).  An answer ends before its first ``stop_ids`` token."""
    stops = set(stop_ids)
    answer = max(next((i for i, t in enumerate(r) if t in stops), len(r)) for _, r in pairs)
    blocks = max(2, math.ceil(answer / block_length))
    return max(len(p) for p, _ in pairs) + blocks * block_length


def _evaluator(args: argparse.Namespace, metadata: dict, table):
    """Decode held-out synthetic problems with the recommended strategy (only for the synthetic task)."""
    if not args.eval_every or metadata.get("task") != "arith" or args.eval_problems < 1:
        return None
    from dllm_arith.evaluate import accuracy

    difficulty = task.Difficulty(**metadata["difficulty"]) if metadata.get("difficulty") else task.Difficulty()
    validation = task.validation_problems(difficulty=difficulty)
    exclude = task.held_out_questions() | {p.question for p in validation} | frozenset(table["question"])
    held_out = list(task.generate(args.eval_problems, metadata.get("seed", 0) + 99, difficulty, exclude))
    gen_length = metadata["config"]["gen_length"]

    def evaluate(model, step: int) -> dict:
        out = accuracy(model, held_out, strategy=RECOMMENDED_STRATEGY, gen_length=gen_length,
                       block_length=min(RECOMMENDED_BLOCK, gen_length))
        return {"eval_accuracy": out["accuracy"], "eval_steps": out["steps"]}

    return evaluate


def _data_teacher(metadata: dict) -> str | None:
    """The teacher the trajectories came from: its registered name when it has one, else its directory."""
    from dllm_strategies.discovery import installed_models

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
    pairs = tr.pairs(table)
    if args.pad_length and args.total_length:
        raise ConfigError("give --total-length (prompt + response, the authors' layout) or --pad-length "
                          "(response only), not both")
    pad_length = args.pad_length or 0
    steps = args.steps if args.steps is not None else math.ceil(args.epochs * len(pairs) / args.batch_size)
    model = load_model(teacher, device=args.device, dtype=args.dtype)
    total_length = 0 if pad_length else (args.total_length or default_total_length(
        pairs, args.block_length, (*model.eot_ids, model.fill_id)))
    weight = args.entropy_weight
    if weight is None:
        weight = DREAM_WEIGHT if model.family.name == "dream" else LLADA_WEIGHT
    config = DistillConfig(
        steps=steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
        total_length=total_length, pad_length=pad_length, block_length=args.block_length,
        mask_distribution=args.mask_distribution, mask_ratio=args.mask_ratio, mask_skew=args.mask_skew,
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


def run_diagnose(args: argparse.Namespace) -> int:
    from dllm_certainty_forcing import trajectories as tr
    from dllm_certainty_forcing.diagnostic import DiagnosticConfig, diagnose, markdown
    from dllm_strategies.models import load_model

    _threads(args)
    config = DiagnosticConfig(ratios=tuple(args.ratios), visited=None if args.visited == "none" else args.visited,
                              blocks=args.blocks, block_length=args.block_length, batch_size=args.batch_size,
                              seed=args.seed)
    table, metadata = tr.load_trajectories(args.data)
    if args.rows < 0:
        raise ConfigError(f"--rows={args.rows} must be >= 0 (0: every trajectory)")
    if args.rows:
        table = table.select(range(min(args.rows, len(table))))
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    report = diagnose(model, table["prompt_ids"], table["response_ids"],
                      gen_length=int(metadata["config"]["gen_length"]), config=config,
                      answers=table["answer"] if metadata.get("task", "").startswith("arith") else None,
                      progress=not args.quiet)
    report = {"model": args.model, "data": str(Path(args.data).resolve()), "data_task": metadata.get("task"),
              "command": {k: v for k, v in vars(args).items() if k != "func"}, **report}
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0
