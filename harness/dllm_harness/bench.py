"""``dllm-strategies bench``: run a matrix of strategy combinations on the held-out set and write
the JSON results, a Markdown table, a Pareto plot, a (TPF, accuracy) plot and a trajectory picture.

    dllm-strategies bench                                   # the default matrix at gen 64 and 256
    dllm-strategies bench --strategy "threshold(tau=0.9)+eot" --strategy entropy_threshold --limit 100
    dllm-strategies bench --sweep                           # each method over its main knob
    dllm-strategies bench --sweep "threshold+eot@threshold.tau=0.7,0.8,0.9,0.95" --gen-lengths 64
    dllm-strategies bench --matrix matrix.yaml --out results/

Every model is loaded once; each (model, gen length) gets the LLaDA low-confidence one-token-per-
step baseline, measured in the same run, that speedups are taken against.  Accuracy is the exact
match of the ``#### N`` number, extracted as :mod:`dllm_arith.evaluate` does.  Costs are
defined in :mod:`dllm_harness.metrics` (and ``docs/metrics.md``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from dllm_strategies import decode, discovery
from dllm_strategies.cli import device_name, non_negative_int, positive_int, quiet_option, run_command
from dllm_strategies.decode import encode_prompts
from dllm_strategies.errors import ConfigError
from dllm_strategies.progress import DecodeProgress
from dllm_strategies.state import check_lengths
from dllm_harness import matrix, metrics
from dllm_harness.journal import Journal, model_fingerprint

DEFAULT_LIMIT = 40  # the first 40 held-out problems: the default matrix fits 30 minutes on 2 CPU cores
DEFAULT_BATCH_SIZE = 32
TASK = "arith"  # the registered task (dllm_tasks hook) whose problems the bench decodes unless --task names one


@attrs.frozen
class ProblemRecord:
    """One problem decoded by one entry.  ``answer_forwards`` + ``tail_forwards`` = ``nfe``
    (:func:`dllm_harness.metrics.split_forwards`); None in records journaled before the split
    existed, so that an old run still resumes (its tables then show no split)."""

    index: int
    answer: int
    predicted: int | None
    correct: bool
    nfe: int
    steps: int
    answer_tokens: int
    seconds: float
    text: str
    answer_forwards: int | None = None
    tail_forwards: int | None = None
    encoder_forwards: int = 0  # the batch's encoder passes (block-diffusion models), apart from nfe


@attrs.frozen
class Trajectory:
    """Which response position got its token at which step, for one example.

    Attributes:
        index: the problem's index in the benchmark set.
        commit_step: per position, the step that committed its final token (-1: filled by a cut).
        tokens: the response tokens.
        eot: per position, whether it holds an end-of-text / end-of-turn token.
    """

    index: int
    commit_step: list[int]
    tokens: list[int]
    eot: list[bool]


@attrs.frozen
class EntryResult:
    """An entry's records and derived metrics (speedup and tail share are filled in against the
    baseline)."""

    entry: matrix.Entry
    records: list[ProblemRecord]
    trajectory: Trajectory | None
    speedup: float | None = None
    tail_share: float | None = None

    @property
    def totals(self) -> metrics.CostTotals:
        return metrics.CostTotals.of(
            metrics.RequestCost(kind="bench", task=self.entry.display, doc_id=r.index, nfe=r.nfe, steps=r.steps,
                                answer_tokens=r.answer_tokens, seconds=r.seconds, answer_forwards=r.answer_forwards,
                                tail_forwards=r.tail_forwards, encoder_forwards=r.encoder_forwards)
            for r in self.records)

    @property
    def accuracy(self) -> float:
        return 100.0 * sum(r.correct for r in self.records) / len(self.records) if self.records else 0.0

    @property
    def task(self) -> tuple[str, int]:
        """The benchmark task the entry is compared within: (model, gen length)."""
        return self.entry.model, int(self.entry.gen_length)

    def summary(self) -> dict[str, Any]:
        e, t = self.entry, self.totals
        return {"label": e.display, "method": e.method_name, "spec": e.spec, "model": e.model,
                "gen_length": e.gen_length, "block_length": e.block_length, "steps": e.resolved_steps,
                "knob": e.knob, "knob_value": e.knob_value, "baseline": e.baseline,
                "problems": len(self.records), "correct": sum(r.correct for r in self.records),
                "accuracy": self.accuracy, "mean_nfe": t.mean_nfe, "mean_steps": t.mean_steps, "tpf": t.tpf,
                "mean_answer_forwards": t.mean_answer_forwards, "mean_tail_forwards": t.mean_tail_forwards,
                "answer_tpf": t.answer_tpf, "answer_forwards": t.answer_forwards, "tail_forwards": t.tail_forwards,
                "mean_encoder_forwards": t.mean_encoder_forwards,
                "tokens_per_second": t.tokens_per_second, "seconds": t.seconds, "answer_tokens": t.answer_tokens,
                "speedup": self.speedup, "tail_share": self.tail_share}


def run_entry(model: Any, entry: matrix.Entry, problems: Sequence[Any], *, batch_size: int, seed: int,
              chat: bool, example: int, progress: bool = True,
              self_references: dict[tuple[int, int], torch.Tensor] | None = None, task: str = TASK) -> EntryResult:
    """Decode every problem with one entry's settings and record what it cost.

    ``self_references`` (one model's, by (gen length, block length)): the plain baseline's
    responses to every problem.  The plain baseline fills it; every other entry gets it as
    ``extras["self_reference"]``, the documented channel through which an oracle whose reference
    is the model's own standard decode (``egp_oracle``) takes it instead of decoding every prompt
    a second time.  (A baseline read back from a journal holds no tokens: the oracle then decodes
    its references itself.)"""
    lengths = (int(entry.gen_length), int(entry.block_length))
    share = _is_plain_baseline(entry) and self_references is not None
    given = None if share or self_references is None else self_references.get(lengths)
    responses = []
    extract_answer = discovery.task(task).extract_answer
    stop_ids = (*model.eot_ids, model.fill_id)
    records: list[ProblemRecord] = []
    trajectory = None
    # a bar over decoded positions, fed every step: a task of fewer problems than a batch still moves
    with DecodeProgress(total=len(problems) * int(entry.gen_length), desc=entry.display, leave=False,
                        disable=None if progress else True) as bar:
        strategy = bar.track(entry.spec)
        for start in range(0, len(problems), batch_size):
            chunk = problems[start:start + batch_size]
            with torch.inference_mode():
                extras = {"self_reference": given[start:start + len(chunk)]} if given is not None else None
                result = decode(model, [p.question for p in chunk], strategy=strategy, gen_length=entry.gen_length,
                                block_length=entry.block_length, steps=entry.resolved_steps, seed=seed, chat=chat,
                                extras=extras)
            if share:
                responses.append(result.tokens)
            answers = metrics.answer_lengths(result.tokens, stop_ids)
            answer_fw, tail_fw = metrics.split_forwards(result.block_nfe, answers, result.tokens.shape[1])
            answers, answer_fw, tail_fw = answers.tolist(), answer_fw.tolist(), tail_fw.tolist()
            seconds_each = result.wall_time / len(chunk)  # a batch's wall time is shared equally by its rows
            nfe, steps = result.nfe.tolist(), result.steps.tolist()
            for row, problem in enumerate(chunk):
                predicted = extract_answer(result.text[row])
                records.append(ProblemRecord(index=start + row, answer=problem.answer, predicted=predicted,
                                             correct=predicted == problem.answer, nfe=nfe[row], steps=steps[row],
                                             answer_tokens=answers[row], seconds=seconds_each, text=result.text[row],
                                             answer_forwards=answer_fw[row], tail_forwards=tail_fw[row],
                                             encoder_forwards=int(result.encoder_forwards)))
            if start <= example < start + len(chunk):
                row = example - start
                tokens = result.tokens[row]
                is_eot = torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device))
                trajectory = Trajectory(index=example, commit_step=result.commit_step[row].tolist(),
                                        tokens=tokens.tolist(), eot=is_eot.tolist())
    if share:
        self_references[lengths] = torch.cat(responses)
    return EntryResult(entry=entry, records=records, trajectory=trajectory)


def _is_plain_baseline(entry: matrix.Entry) -> bool:
    """The baseline in its plain form (no options): LLaDA low-confidence, one token per step,
    greedy; exactly the decode an oracle's self-reference is (docs/learn2pd.md)."""
    return entry.baseline and entry.spec.strip() in ("", matrix.BASELINE_METHOD)


def _from_journal(entry: matrix.Entry, row: dict[str, Any]) -> EntryResult:
    trajectory = row["trajectory"]
    return EntryResult(entry=entry, records=[ProblemRecord(**r) for r in row["records"]],
                       trajectory=Trajectory(**trajectory) if trajectory is not None else None)


def _warm_up(model: Any, entry: matrix.Entry, problem: Any, chat: bool) -> None:
    """One untimed decode, so that lazy initialisation is not billed to the first entry."""
    with torch.inference_mode():
        decode(model, [problem.question], strategy=entry.spec, gen_length=entry.gen_length,
               block_length=entry.block_length, steps=entry.resolved_steps, chat=chat)


def baseline_finder(results: Sequence[EntryResult]) -> Callable[[EntryResult], EntryResult | None]:
    """The baseline each result is compared with: that of its (model, gen length), or of its gen
    length when the run has one baseline model for all (``--baseline-model``)."""
    baselines = [r for r in results if r.entry.baseline]
    shared = len({r.entry.model for r in baselines}) == 1 and len({r.entry.model for r in results}) > 1

    def task(r: EntryResult) -> tuple[str, int] | int:
        return r.task[1] if shared else r.task

    table = {task(r): r for r in baselines}
    return lambda r: table.get(task(r))


def with_speedups(results: Sequence[EntryResult]) -> list[EntryResult]:
    """Each result with its speedup over the baseline it is compared with (:func:`baseline_finder`)
    and the tail share of the forwards it saves against it (docs/metrics.md)."""
    baseline_of = baseline_finder(results)
    out = []
    for r in results:
        base, seconds = baseline_of(r), r.totals.seconds
        value = metrics.speedup(base.totals.seconds, seconds) if base and base.totals.seconds and seconds > 0 else None
        share = None if base is None or r.entry.baseline else metrics.tail_share(base.totals, r.totals)
        out.append(attrs.evolve(r, speedup=value, tail_share=share))
    return out


def best_combinations(results: Sequence[EntryResult], aups: Sequence[dict[str, Any]],
                      tolerance: float = 1.0) -> list[dict[str, Any]]:
    """Per gen length, the run's best combination: the entry with the most tokens per second among
    those at most ``tolerance`` accuracy points below their baseline, and the method with the
    highest AUP (None where no entry qualifies)."""
    baseline_of = baseline_finder(results)
    rows = []
    for G in dict.fromkeys(r.task[1] for r in results):
        kept = [r for r in results if r.task[1] == G and not r.entry.baseline and (b := baseline_of(r)) is not None
                and r.accuracy >= b.accuracy - tolerance]
        fastest = max(kept, key=lambda r: r.totals.tokens_per_second, default=None)
        top = max((a for a in aups if a["gen_length"] == G), key=lambda a: a["aup"], default=None)
        rows.append({
            "gen_length": G, "tolerance": tolerance,
            "fastest": None if fastest is None else {
                "model": fastest.entry.model, "label": fastest.entry.display, "accuracy": fastest.accuracy,
                "baseline_accuracy": baseline_of(fastest).accuracy,
                "tokens_per_second": fastest.totals.tokens_per_second, "speedup": fastest.speedup},
            "best_aup": None if top is None else {"model": top["model"], "method": top["method"], "aup": top["aup"]},
        })
    return rows


def aup_table(results: Sequence[EntryResult]) -> list[dict[str, Any]]:
    """AUP of every method with several (TPF, accuracy) points, per (model, gen length); y_max is the
    best accuracy of any entry of that (model, gen length)."""
    rows = []
    tasks = dict.fromkeys(r.task for r in results)
    for task in tasks:
        here = [r for r in results if r.task == task]
        y_max = max(r.accuracy for r in here)
        methods: dict[str, list[EntryResult]] = {}
        for r in here:
            methods.setdefault(r.entry.method_name, []).append(r)
        for method, members in methods.items():
            points = [(r.totals.tpf, r.accuracy) for r in members if r.totals.tpf > 0]
            if len(points) < 2:
                continue
            rows.append({"model": task[0], "gen_length": task[1], "method": method, "points": len(points),
                         "aup": metrics.aup(points, y_max), "y_max": y_max})
    return rows


def run_bench(entries: Sequence[matrix.Entry], problems: Sequence[Any], *, batch_size: int = DEFAULT_BATCH_SIZE,
              seed: int = 0, chat: bool = True, example: int = 0, device: str | None = None, dtype: str | None = None,
              loader: Callable[[str], Any] | None = None, progress: bool = True,
              journal: Journal | None = None, task: str = TASK) -> list[EntryResult]:
    """Run every entry (entries must be expanded: :func:`dllm_harness.matrix.expand`); each model is
    loaded once (``loader(name)``, default :func:`dllm_strategies.load_model`).  With a ``journal``,
    each finished entry is written to it at once, and entries it already holds are read back
    instead of decoded again (a model whose entries are all there is not loaded)."""
    if not problems:
        raise ConfigError("bench: no problems to decode")
    if not 0 <= example < len(problems):
        raise ConfigError(f"bench: --example {example} is outside the {len(problems)} benchmark problems")
    if loader is None:
        from dllm_strategies import load_model

        def loader(name: str) -> Any:
            return load_model(name, device=device, dtype=dtype)

    results: list[EntryResult] = []
    by_model: dict[str, list[matrix.Entry]] = {}
    for entry in entries:
        by_model.setdefault(entry.model, []).append(entry)
    with tqdm(total=len(entries), desc="bench", unit="entry", disable=None if progress else True,
              file=sys.stderr) as bar:
        _run_models(by_model, bar, results, problems, loader=loader, batch_size=batch_size, seed=seed, chat=chat,
                    example=example, progress=progress, journal=journal, task=task)
    order = {id(e): i for i, e in enumerate(entries)}
    results.sort(key=lambda r: order[id(r.entry)])
    return with_speedups(results)


def _run_models(by_model: dict[str, list[matrix.Entry]], bar: Any, results: list[EntryResult],
                problems: Sequence[Any], *, loader: Callable[[str], Any], batch_size: int, seed: int, chat: bool,
                example: int, progress: bool, journal: Journal | None, task: str) -> None:
    """Run each model's entries in turn, loading a model only when one of its entries is not journaled."""
    for name, members in by_model.items():
        model = None
        self_references: dict[tuple[int, int], torch.Tensor] = {}
        for entry in members:
            saved = journal.find(entry) if journal is not None else None
            if saved is not None:
                result = _from_journal(entry, saved)
            else:
                if model is None:
                    model = loader(name)
                    _warm_up(model, members[0], problems[0], chat)
                result = run_entry(model, entry, problems, batch_size=batch_size, seed=seed, chat=chat,
                                   example=example, progress=progress, self_references=self_references,
                                   task=task)
                if journal is not None:
                    journal.add(entry, result.records, result.trajectory)
            results.append(result)
            t = result.totals
            split = "" if t.answer_tpf is None else (f" (answer {t.mean_answer_forwards:.1f} + tail "
                                                      f"{t.mean_tail_forwards:.1f}, answer TPF {t.answer_tpf:.2f})")
            bar.write(f"{entry.display:<40} gen {entry.gen_length:<4} acc {result.accuracy:5.1f}%  "
                      f"NFE {t.mean_nfe:6.1f}  TPF {t.tpf:5.2f}{split}  {t.tokens_per_second:7.1f} tok/s"
                      + ("  (from the journal)" if saved is not None else ""))
            bar.update(1)
        del model


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model for entries that name none (default: default)")
    p.add_argument("--strategy", action="append", default=None, metavar="SPEC",
                   help="an entry (repeatable); with neither --strategy, --matrix nor --sweep the default matrix runs")
    p.add_argument("--matrix", default=None, help="JSON or YAML file of entries (see dllm_harness.matrix)")
    p.add_argument("--sweep", nargs="*", default=None, metavar="SPEC@KNOB=V1,V2",
                   help="sweep mode: each value a sweep such as 'threshold@threshold.tau=0.7,0.8,0.9,0.95'; "
                        f"no value: the {len(matrix.DEFAULT_SWEEPS)} default sweeps, those installed of: "
                        + "; ".join(_sweep_names()))
    p.add_argument("--gen-lengths", "--gen_lengths", dest="gen_lengths",
                   default=",".join(map(str, matrix.DEFAULT_GEN_LENGTHS)),
                   help="gen lengths for entries that name none (default: %(default)s)")
    p.add_argument("--baseline-model", "--baseline_model", dest="baseline_model", default=None, metavar="MODEL",
                   help="measure one baseline per gen length, on this model, and take every model's speedup "
                        "against it (e.g. a distilled model against its teacher); default: one per model")
    p.add_argument("--block-length", "--block_length", dest="block_length", type=positive_int, default=None,
                   help="block length for entries that name none (default: the model's recommended, else 32)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="steps for --strategy entries (default: the gen length, one token per step)")
    p.add_argument("--limit", type=non_negative_int, default=DEFAULT_LIMIT,
                   help=f"decode the first N held-out problems (default: {DEFAULT_LIMIT}; 0: all 500)")
    p.add_argument("--task", default=TASK, metavar="NAME",
                   help="the registered task whose problems are decoded: arith (default) or arith-long, the "
                        "long-answer variant (solutions over 3 or 4 blocks of 32), or a plugin's")
    p.add_argument("--problems", choices=("test", "validation"), default="test",
                   help="the held-out test split (the benchmark set, default) or the training run's validation "
                        "split (500 problems, to choose models and settings on without touching the test set)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="problems decoded together (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of every random choice of decoding (default: 0)")
    p.add_argument("--example", type=non_negative_int, default=0,
                   help="problem whose trajectory is drawn (default: 0)")
    p.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda, cuda:N... (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default=None,
                   help="auto (default: bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--no-chat", "--no_chat", dest="chat", action="store_false",
                   help="do not wrap questions in the chat template")
    p.add_argument("--out", default="bench-results", help="output directory (default: bench-results)")
    quiet_option(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: entries in its journal.jsonl are not decoded again "
                        "(same settings required)")


def _sweep_names() -> list[str]:
    """What each default sweep varies, for the help: ``threshold over threshold.tau``."""
    names = []
    for text in matrix.DEFAULT_SWEEPS:
        spec, knob = text.split("@", 1)
        names.append(f"{matrix.method_of(spec)} over {knob.split('=', 1)[0]}")
    return names


def _gen_lengths(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"--gen-lengths {text!r}: expected comma-separated integers, e.g. 64,256") from exc
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--gen-lengths {text!r}: expected positive integers, e.g. 64,256")
    return values


def entries_from_args(args: argparse.Namespace) -> tuple[list[matrix.Entry], list[tuple[matrix.Entry, str]]]:
    """The run's expanded entries and the default ones skipped (plugin not installed)."""
    defaults = {"model": args.model}
    chosen: list[matrix.Entry] = []
    skipped: list[tuple[matrix.Entry, str]] = []
    if args.matrix:
        chosen += matrix.read_matrix(args.matrix, **defaults)
    for spec in args.strategy or ():
        chosen.append(matrix.Entry(spec=spec, steps=args.steps, **defaults))
    if args.sweep is not None:
        if args.sweep:
            for text in args.sweep:
                chosen += matrix.parse_sweep(text, **defaults)
        else:
            swept = [e for text in matrix.DEFAULT_SWEEPS for e in matrix.parse_sweep(text, **defaults)]
            kept, skipped = matrix.installed(swept, optional=True)
            chosen += kept
    if not chosen:
        kept, skipped = matrix.installed([matrix.Entry(spec=m.pop("spec"), **defaults, **m)
                                          for m in map(dict, matrix.DEFAULT_MATRIX)], optional=True)
        chosen = kept
    chosen, _ = matrix.installed(chosen, optional=False)
    names = {e.model for e in chosen} | ({args.baseline_model} if args.baseline_model else set())
    recommended = {name: discovery.model_entry(name) and discovery.model_entry(name).get("block_length")
                   for name in names}
    expanded = matrix.expand(chosen, _gen_lengths(args.gen_lengths), block_length=args.block_length,
                             block_lengths=recommended, baseline_model=args.baseline_model)
    for entry in expanded:  # every entry's lengths are checked before any model loads
        try:
            check_lengths(int(entry.gen_length), entry.block_length, entry.resolved_steps)
        except ConfigError as exc:
            raise ConfigError(f"bench entry {entry.display!r} at gen length {entry.gen_length}: {exc}") from None
    return expanded, skipped


def _problems(split: str, limit: int, name: str = TASK) -> tuple[list[Any], str]:
    """The first ``limit`` problems (0: all) of ``split`` of task ``name`` and how the report names them."""
    task = discovery.task(name)
    if split == "validation":
        problems = task.validation_problems()
        where = f"the validation split of task {name!r} (validation_problems(), seed 0)"
    else:
        problems = task.test_problems()
        where = f"the test split of task {name!r} ({Path(task.TEST_FILE).name})"
    problems = problems[:limit] if limit else problems
    return problems, f"first {len(problems)} of {where}"


def command(args: argparse.Namespace) -> int:
    """The ``bench`` command."""
    from dllm_harness import plots, report

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.limit < 0:
        raise ConfigError(f"--limit must be >= 0 (0: all problems), got {args.limit}")
    entries, skipped = entries_from_args(args)
    for entry, reason in skipped:
        print(f"skipped {entry.display!r}: {reason}", file=sys.stderr)
    problems, problem_set = _problems(args.problems, args.limit, args.task)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the split is named only when it is not the test set, so journals written before --problems still resume
    settings = {"problems": len(problems), **({"problem_set": args.problems} if args.problems != "test" else {}),
                **({"task": args.task} if args.task != TASK else {}),
                "seed": args.seed, "batch_size": args.batch_size, "chat": args.chat,
                "example": args.example, "device": args.device, "dtype": args.dtype,
                "torch_threads": torch.get_num_threads(),
                "models": {name: model_fingerprint(name) for name in sorted({e.model for e in entries})}}
    journal = Journal.open(out, settings, resume=args.resume)
    if args.resume and journal.done:
        print(f"resuming {out}: {len(journal.done)} finished entries in its journal", file=sys.stderr)
    started = time.time()
    results = run_bench(entries, problems, batch_size=args.batch_size, seed=args.seed, chat=args.chat,
                        example=args.example, device=args.device, dtype=args.dtype, progress=not args.quiet,
                        journal=journal, task=args.task)
    meta = {"command": " ".join(sys.argv), "problems": len(problems), "limit": args.limit or None,
            "problem_set": problem_set, "task": args.task,
            "seed": args.seed, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "wall_seconds": time.time() - started, "processes": list(journal.processes()),
            "skipped": [{"entry": e.display, "reason": r} for e, r in skipped]}
    aups = aup_table(results)
    best = best_combinations(results, aups)
    paths = report.write(out, results, aups, meta, best)
    problem = problems[args.example]
    paths["pareto"] = plots.pareto(results, out / "pareto.png")
    paths["tpf"] = plots.tpf_curves(results, aups, out / "tpf_accuracy.png")
    paths["trajectory"] = plots.trajectory(results, out / "trajectory.png", problem.question)
    print(report.markdown(results, aups, meta, best))
    for name, path in paths.items():
        print(f"wrote {name}: {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dllm_harness.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: command(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
