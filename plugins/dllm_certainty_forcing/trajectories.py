"""The distillation data: the teacher's own decoding trajectories on training prompts.

dParallel distils a model towards the outputs it produces itself: the teacher (the base
model) decodes each training prompt with its standard semi-autoregressive low-confidence
decode (one token per step), and only trajectories whose final answer is correct are kept.
The targets are the teacher's tokens, not the data set's gold text (self-distillation).
(Chen et al., "dParallel", arXiv 2509.26488.)

The result is a ``datasets.Dataset`` saved with ``save_to_disk`` beside a
``trajectories.json`` that records how it was made.  Columns:

* ``question``, ``answer``: the problem (the gold answer is only used to filter);
* ``prompt_ids``: the prompt as the teacher saw it (chat template applied when ``chat``);
* ``response_ids``: the teacher's response with its trailing end-of-text fill removed
  (training pads it back with end-of-text to its own length);
* ``text``, ``predicted``, ``correct``: the decoded text, the number it ends with, and
  whether that is the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import torch

from dllm_strategies.arith.task import ANSWER_RE, Problem
from dllm_strategies.decode import decode, encode_prompts
from dllm_strategies.errors import ConfigError

METADATA = "trajectories.json"
KEEP = ("correct", "all")


def _positive(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"trajectories: {attribute.name}={value!r} must be a positive integer")


def _keep(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in KEEP:
        raise ConfigError(f"trajectories: keep={value!r}; use 'correct' (the method) or 'all' (smoke tests only)")


@attrs.frozen
class TrajectoryConfig:
    """How the teacher decodes the training prompts.

    Attributes:
        gen_length: response length the teacher decodes (one token per step).
        block_length: its semi-autoregressive block width (must divide ``gen_length``).
        batch_size: prompts decoded together.
        chat: wrap prompts in the tokenizer's chat template.
        keep: ``correct`` keeps trajectories whose answer is right (the method); ``all``
            keeps every one (only for smoke tests with untrained models).
        answer_pattern: regular expression whose first group is the final answer
            (default GSM8K's ``#### <number>``).
    """

    gen_length: int = attrs.field(default=64, validator=_positive)
    block_length: int = attrs.field(default=32, validator=_positive)
    batch_size: int = attrs.field(default=64, validator=_positive)
    chat: bool = True
    keep: Literal["correct", "all"] = attrs.field(default="correct", validator=_keep)
    answer_pattern: str = ANSWER_RE.pattern

    def __attrs_post_init__(self) -> None:
        if self.gen_length % self.block_length:
            raise ConfigError(f"trajectories: block_length={self.block_length} must divide "
                              f"gen_length={self.gen_length}")
        try:
            compiled = re.compile(self.answer_pattern)
        except re.error as exc:
            raise ConfigError(f"trajectories: answer_pattern {self.answer_pattern!r} is not a regular "
                              f"expression: {exc}") from exc
        if compiled.groups < 1:
            raise ConfigError(f"trajectories: answer_pattern {self.answer_pattern!r} needs a group capturing "
                              "the answer, e.g. '####\\s*(-?\\d+)'")


def final_answer(text: str, pattern: str = ANSWER_RE.pattern) -> int | None:
    """The integer captured by the first match of ``pattern`` in ``text``, or None."""
    match = re.search(pattern, text)
    if match is None:
        return None
    try:
        return int(match.group(1).replace(",", ""))
    except ValueError:
        return None


def is_correct(text: str, answer: int, pattern: str = ANSWER_RE.pattern) -> bool:
    """Whether the teacher's ``text`` gives the right ``answer`` (the trajectory filter; with the
    default pattern, the same test as ``dllm_strategies.arith.task.extract_answer(text) == answer``)."""
    return final_answer(text, pattern) == answer


def trailing_count(tokens: torch.Tensor, token_id: int) -> torch.Tensor:
    """(B,) how many positions at the end of each row of ``tokens`` (B, G) hold ``token_id``."""
    same = (tokens == token_id).flip(1).long()
    return same.cumprod(1).sum(1)


@torch.inference_mode()
def teacher_trajectories(model: Any, problems: Sequence[Problem], config: TrajectoryConfig = TrajectoryConfig(),
                         *, progress: bool = True):
    """Decode every problem with the teacher's standard decode (LLaDA low-confidence, one
    token per step); return every row, right or not, as a ``datasets.Dataset`` (see the
    module docstring for the columns).  :func:`keep_rows` then applies ``config.keep``."""
    import datasets
    from tqdm.auto import tqdm

    if not problems:
        raise ConfigError("trajectories: no problems to decode; ask for at least one")
    rows: dict[str, list] = {k: [] for k in ("question", "answer", "prompt_ids", "response_ids", "text",
                                             "predicted", "correct")}
    bar = tqdm(total=len(problems), desc="trajectories", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(problems), config.batch_size):
        chunk = problems[start:start + config.batch_size]
        ids, mask = encode_prompts(model, [p.question for p in chunk], chat=config.chat)
        result = decode(model, ids, prompt_mask=mask, strategy=None, gen_length=config.gen_length,
                        block_length=config.block_length, steps=config.gen_length)
        response = result.tokens.cpu()
        lengths = (config.gen_length - trailing_count(response, model.fill_id)).tolist()
        for i, problem in enumerate(chunk):
            predicted = final_answer(result.text[i], config.answer_pattern)
            rows["question"].append(problem.question)
            rows["answer"].append(int(problem.answer))
            rows["prompt_ids"].append(ids[i][mask[i]].tolist())
            rows["response_ids"].append(response[i, :lengths[i]].tolist())
            rows["text"].append(result.text[i])
            rows["predicted"].append(predicted)
            rows["correct"].append(is_correct(result.text[i], problem.answer, config.answer_pattern))
        bar.update(len(chunk))
        bar.set_postfix(correct=f"{sum(rows['correct'])}/{len(rows['correct'])}")
    bar.close()
    features = datasets.Features({
        "question": datasets.Value("string"), "answer": datasets.Value("int64"),
        "prompt_ids": datasets.Sequence(datasets.Value("int64")),
        "response_ids": datasets.Sequence(datasets.Value("int64")),
        "text": datasets.Value("string"), "predicted": datasets.Value("int64"), "correct": datasets.Value("bool"),
    })
    return datasets.Dataset.from_dict(rows, features=features)


def keep_rows(table, keep: str):
    """The rows training uses: those marked ``correct`` (the method), or all of them."""
    if keep not in KEEP:
        raise ConfigError(f"trajectories: keep={keep!r}; use one of {', '.join(KEEP)}")
    if keep == "all":
        return table
    chosen = [i for i, ok in enumerate(table["correct"]) if ok]
    return table.select(chosen)


def save_trajectories(table, directory: str | Path, metadata: dict[str, Any]) -> Path:
    """Write the table (``save_to_disk``) and ``trajectories.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table.save_to_disk(str(directory / "data"))
    (directory / METADATA).write_text(json.dumps(metadata, indent=1))
    return directory


def load_trajectories(directory: str | Path):
    """``(dataset, metadata)`` written by :func:`save_trajectories`.

    Raises:
        ConfigError: the directory is not a trajectories directory, or holds no rows.
    """
    import datasets

    directory = Path(directory)
    meta_file = directory / METADATA
    if not meta_file.is_file() or not (directory / "data").is_dir():
        raise ConfigError(f"{directory} holds no trajectories (no {METADATA} and data/); make them with "
                          "'dllm-strategies distill trajectories --output DIR'")
    table = datasets.load_from_disk(str(directory / "data"))
    if len(table) == 0:
        raise ConfigError(f"{directory} holds no trajectories: the teacher got no answer right; decode more "
                          "problems, or use a better teacher")
    missing = {"prompt_ids", "response_ids"} - set(table.column_names)
    if missing:
        raise ConfigError(f"{directory}: the trajectories lack the column(s) {', '.join(sorted(missing))}")
    return table, json.loads(meta_file.read_text())


def read_problems(path: str | Path) -> list[Problem]:
    """Problems from a jsonl file with ``question`` and integer ``answer`` per line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"problems file {path} does not exist")
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "question" not in row or not isinstance(row.get("answer"), int):
            raise ConfigError(f"{path}:{number}: each line needs 'question' (text) and 'answer' (an integer)")
        problems.append(Problem(question=row["question"], solution=row.get("solution", ""), answer=row["answer"]))
    return problems


def pairs(table) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per row, the form training batches are collated from."""
    return list(zip(table["prompt_ids"], table["response_ids"], strict=True))

