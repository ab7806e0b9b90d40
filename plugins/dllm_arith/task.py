"""GSM8K-shaped synthetic arithmetic word problems, deterministic by seed.

A problem tells a short story: someone starts with a number of things, then 1 to 4
events add or remove some.  The worked solution writes one line per event, carrying the
running total from line to line, and ends with GSM8K's ``#### <number>`` line::

    Q: Mia has 7 shells. She finds 8 more. She gives 5 to Ben. How many shells does Mia have now?
    A: 7 + 8 = 15. so 15 - 5 = 10. #### 10

Each line's result feeds the next, so the answer depends on the chain being written
left to right.  With ``forms`` > 0 the solution text has several valid surface forms
(the operands of a sum in either order, an optional leading word of 0 to 2 tokens): the
token-wise mixture of two valid forms is wrong, which is what committing several
positions at once gets wrong and what one token per step gets right.

Difficulty knobs live in :class:`Difficulty`; :func:`generate` yields problems,
:func:`make_splits` builds ``datasets.Dataset`` splits with the held-out test prompts
excluded from training.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs

NAMES = (
    ("Tom", "he", "him"), ("Ann", "she", "her"), ("Sam", "he", "him"), ("Lily", "she", "her"),
    ("Ben", "he", "him"), ("Mia", "she", "her"), ("Jack", "he", "him"), ("Emma", "she", "her"),
    ("Leo", "he", "him"), ("Zoe", "she", "her"), ("Max", "he", "him"), ("Ivy", "she", "her"),
)
ITEMS = (
    "apples", "books", "coins", "marbles", "stamps", "cards",
    "shells", "pencils", "cookies", "toys", "eggs", "flowers",
)
STARTS = (
    "{name} has {a} {items} .",
    "{name} starts with {a} {items} .",
    "There are {a} {items} in {name} ' s box .",
    "{name} owns {a} {items} .",
)
ADDS = (
    "{P} buys {b} more .",
    "{P} finds {b} more .",
    "{friend} gives {obj} {b} more .",
    "{P} gets {b} more from {friend} .",
    "{P} makes {b} more .",
)
SUBS = (
    "{P} gives {b} to {friend} .",
    "{P} loses {b} .",
    "{P} sells {b} .",
    "{friend} takes {b} of them .",
    "{P} throws away {b} .",
)
QUESTIONS = (
    "How many {items} does {name} have now ?",
    "How many {items} does {name} have in the end ?",
)
FILLERS = ("", "so ", "and then ")  # 0, 1 and 2 tokens

ANSWER_RE = re.compile(r"####\s*(-?\d+)")


@attrs.frozen
class Difficulty:
    """Knobs of the generator.

    Attributes:
        min_ops: fewest events after the start (>= 1).
        max_ops: most events, at most 16 (<= 4 keeps a solution within 64 tokens; 10 to 12,
            the long-answer variant, give 67 to 116 tokens: 3 or 4 blocks of 32, within 128).
        max_operand: largest number in the story (start and every event).
        max_total: the running total never exceeds this.
        forms: 0 canonical solution text only; 1 also swaps the operands of a sum;
            2 also starts a line with an optional filler of 0 to 2 tokens.
    """

    min_ops: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    max_ops: int = attrs.field(default=4, validator=attrs.validators.le(16))
    max_operand: int = attrs.field(default=9, validator=attrs.validators.ge(1))
    max_total: int = attrs.field(default=60, validator=attrs.validators.ge(2))
    forms: int = attrs.field(default=2, validator=attrs.validators.in_((0, 1, 2)))

    def __attrs_post_init__(self) -> None:
        if self.max_ops < self.min_ops:
            raise ValueError(f"Difficulty: max_ops={self.max_ops} < min_ops={self.min_ops}")


def add_difficulty_arguments(parser: argparse.ArgumentParser, *, defaults: Difficulty | None = Difficulty()) -> None:
    """The task's difficulty flags, shared by every command that makes problems.  ``defaults=None``
    leaves them unset (None), for a command that takes the difficulty from elsewhere (a teacher's
    recipe) unless the user overrides it."""
    parser.add_argument("--min-ops", type=int, default=defaults and defaults.min_ops, metavar="N",
                        help=f"fewest events per problem (default: {defaults.min_ops if defaults else 'inherited'})")
    parser.add_argument("--max-ops", type=int, default=defaults and defaults.max_ops, metavar="N",
                        help=f"most events per problem (default: {defaults.max_ops if defaults else 'inherited'})")
    parser.add_argument("--max-operand", type=int, default=defaults and defaults.max_operand, metavar="N",
                        help="largest number in a story "
                             f"(default: {defaults.max_operand if defaults else 'inherited'})")
    parser.add_argument("--forms", type=int, default=defaults and defaults.forms, choices=(0, 1, 2),
                        help="surface forms of the solution text: 0 canonical, 1 sums in either order, 2 also "
                             f"an optional leading word (default: {defaults.forms if defaults else 'inherited'})")


def difficulty_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Difficulty:
    """``base`` difficulty values overridden by the flags the user gave (ValueError if they clash)."""
    values = dict(base or {})
    values.update({key: getattr(args, key) for key in ("min_ops", "max_ops", "max_operand", "forms")
                   if getattr(args, key, None) is not None})
    try:
        return Difficulty(**values)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


@attrs.frozen
class Problem:
    """One word problem: ``question`` (the prompt), ``solution`` (worked lines and
    ``#### answer``) and the integer ``answer``."""

    question: str
    solution: str
    answer: int

    def to_dict(self) -> dict:
        return {"question": self.question, "solution": self.solution, "answer": self.answer}


def _problem(rng: random.Random, d: Difficulty) -> Problem:
    name, pronoun, obj = rng.choice(NAMES)
    friend = rng.choice([n for n, _, _ in NAMES if n != name])
    items = rng.choice(ITEMS)
    total = rng.randint(1, d.max_operand)
    sentences = [rng.choice(STARTS).format(name=name, a=total, items=items)]
    lines = []
    for _ in range(rng.randint(d.min_ops, d.max_ops)):
        # Lean towards sums so totals climb past 9 (carries, then borrows).
        add = total + 1 <= d.max_total and (total < 2 or rng.random() < 0.6)
        if add:
            b = rng.randint(1, min(d.max_operand, d.max_total - total))
            template, result = rng.choice(ADDS), total + b
            left, right = (b, total) if d.forms >= 1 and rng.random() < 0.5 else (total, b)
            expr = f"{left} + {right}"
        else:
            b = rng.randint(1, min(d.max_operand, total))
            template, result = rng.choice(SUBS), total - b
            expr = f"{total} - {b}"
        subject = pronoun.capitalize()
        sentences.append(template.format(P=subject, b=b, friend=friend, obj=obj))
        filler = rng.choice(FILLERS) if d.forms >= 2 else ""
        lines.append(f"{filler}{expr} = {result} .")
        total = result
    sentences.append(rng.choice(QUESTIONS).format(items=items, name=name))
    solution = " ".join(lines + [f"#### {total}"])
    return Problem(question=" ".join(sentences), solution=solution, answer=total)


def generate(n: int, seed: int, difficulty: Difficulty = Difficulty(),
             exclude: frozenset[str] = frozenset()) -> Iterator[Problem]:
    """Yield ``n`` problems, deterministic in ``seed``; questions in ``exclude`` are skipped."""
    rng = random.Random(seed)
    made = 0
    while made < n:
        problem = _problem(rng, difficulty)
        if problem.question in exclude:
            continue
        made += 1
        yield problem


def extract_answer(text: str) -> int | None:
    """The number after the first ``####`` in ``text``, or None."""
    match = ANSWER_RE.search(text)
    return int(match.group(1)) if match else None


TEST_SEED = 20251123
TEST_SIZE = 500
VALIDATION_SIZE = 500  # the validation split: models and settings are chosen on it, never trained on it
DATA_DIR = Path(__file__).parent / "data"
TEST_FILE = DATA_DIR / "test.jsonl"


@attrs.frozen
class Variant:
    """A shipped variant of the task, registered as a task of its own (``dllm_tasks``): its
    difficulty and its held-out test split (the benchmark set, never trained on).

    Attributes:
        name: the task's registered name (``bench --task NAME``).
        difficulty: the problems' :class:`Difficulty`.
        test_file: the shipped test split (JSON lines).
        test_seed: the seed the test split was drawn with.
    """

    name: str
    difficulty: Difficulty
    test_file: Path
    test_seed: int
    Problem: ClassVar[type] = Problem
    ANSWER_RE: ClassVar[re.Pattern] = ANSWER_RE

    @property
    def TEST_FILE(self) -> Path:  # the task interface's name (docs/hooks.md, dllm_tasks)
        return self.test_file

    def test_problems(self) -> list[Problem]:
        """The shipped held-out test split."""
        return _read(self.test_file)

    def validation_problems(self, size: int = VALIDATION_SIZE, seed: int = 0) -> list[Problem]:
        """The validation split of this variant's training run seeded ``seed`` (the set models
        and settings are chosen on)."""
        return validation_problems(size, seed, self.difficulty)

    @staticmethod
    def extract_answer(text: str) -> int | None:
        return extract_answer(text)

    def write_test_split(self, exclude: frozenset[str] = frozenset()) -> None:
        """Regenerate the shipped test split: ``TEST_SIZE`` unique questions drawn with
        ``test_seed``, none in ``exclude`` (the questions of a training run made before it)."""
        seen: set[str] = set(exclude)
        rows = []
        for problem in generate(100 * TEST_SIZE, self.test_seed, self.difficulty):
            if problem.question not in seen:
                seen.add(problem.question)
                rows.append(problem)
            if len(rows) == TEST_SIZE:
                break
        self.test_file.parent.mkdir(parents=True, exist_ok=True)
        with self.test_file.open("w") as f:
            for problem in rows:
                f.write(json.dumps(problem.to_dict()) + "\n")


# The task the shipped models are trained on, and the long-answer variant: 10 to 12 events, whose
# solutions (67 to 116 tokens) fill 3 or 4 blocks of 32, where the default's fill one.
ARITH = Variant("arith", Difficulty(), TEST_FILE, TEST_SEED)
ARITH_LONG = Variant("arith-long", Difficulty(min_ops=10, max_ops=12), DATA_DIR / "test-long.jsonl", TEST_SEED + 1)
VARIANTS = {variant.name: variant for variant in (ARITH, ARITH_LONG)}


def _read(path: Path) -> list[Problem]:
    with path.open() as f:
        return [Problem(**json.loads(line)) for line in f]


def test_problems() -> list[Problem]:
    """The shipped held-out test split of the default task (never trained on): the project's
    benchmark set."""
    return ARITH.test_problems()


@functools.cache
def held_out_questions() -> frozenset[str]:
    """Every shipped variant's test questions: no training or validation set holds one."""
    return frozenset(p.question for variant in VARIANTS.values() if variant.test_file.is_file()
                     for p in variant.test_problems())


def write_test_split(path: Path = TEST_FILE, difficulty: Difficulty = Difficulty()) -> None:
    """Regenerate a held-out split at ``path`` (the default task's, by default)."""
    Variant("custom", difficulty, path, TEST_SEED).write_test_split()


def validation_problems(size: int = VALIDATION_SIZE, seed: int = 0,
                        difficulty: Difficulty = Difficulty()) -> list[Problem]:
    """The validation split of the training run seeded ``seed`` (:func:`make_splits`): never in a
    test split nor trained on; the set to choose models and settings on."""
    return list(generate(size, seed + 1, difficulty, held_out_questions()))


def make_splits(train_size: int, validation_size: int = VALIDATION_SIZE, seed: int = 0,
                difficulty: Difficulty = Difficulty()):
    """``datasets.DatasetDict`` with ``train``, ``validation`` (the first ``validation_size`` of
    the validation split) and the shipped ``test`` (of the variant with this difficulty; the
    default task's for another).

    Train never contains a question of a shipped test split nor of the whole validation split.
    (The shipped ``default`` was trained before the whole split was held out: its recipe held out
    the first 256, and 5 of the other 244 are among its 400,000 training problems.)
    """
    import datasets

    same = [v for v in VARIANTS.values() if v.difficulty == difficulty and v.test_file.is_file()]
    test = same[0].test_problems() if same else test_problems()
    validation = validation_problems(validation_size, seed, difficulty)
    # the whole validation split stays out of training, whatever part of it the run's loss reads
    split = validation_problems(max(validation_size, VALIDATION_SIZE), seed, difficulty)
    exclude = held_out_questions() | {p.question for p in split}
    train = generate(train_size, seed, difficulty, exclude)

    def table(problems):
        return datasets.Dataset.from_list([p.to_dict() for p in problems])

    return datasets.DatasetDict(
        train=table(train), validation=table(validation), test=table(test)
    )
