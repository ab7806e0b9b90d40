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

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import torch

from dllm_arith.task import ANSWER_RE, Problem
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
        gen_length: response length the teacher decodes (one token per step): the length the
            student is judged at (256, as the authors).
        block_length: its semi-autoregressive block width (must divide ``gen_length``).
        batch_size: prompts decoded together.
        chat: wrap prompts in the tokenizer's chat template.
        keep: ``correct`` keeps trajectories whose answer is right (the method); ``all``
            keeps every one (only for smoke tests with untrained models).
        answer_pattern: regular expression whose first group is the final answer
            (default GSM8K's ``#### <number>``).
    """

    gen_length: int = attrs.field(default=256, validator=_positive)
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
    default pattern, the same test as ``dllm_arith.task.extract_answer(text) == answer``)."""
    return final_answer(text, pattern) == answer


def trailing_count(tokens: torch.Tensor, token_id: int) -> torch.Tensor:
    """(B,) how many positions at the end of each row of ``tokens`` (B, G) hold ``token_id``."""
    same = (tokens == token_id).flip(1).long()
    return same.cumprod(1).sum(1)


COLUMNS = ("question", "answer", "prompt_ids", "response_ids", "text", "predicted", "correct")
PARTS = "parts"
SETTINGS = "settings.json"


def weights_fingerprint(directory: str | Path) -> str:
    """Identifies a checkpoint's weights wherever the directory lies (a resumed decode refuses a
    teacher that changed, not one that moved): a hash of its config and of each weight file's
    name, size, head and tail, cheap even for an 8B checkpoint."""
    digest = hashlib.sha256()
    path = Path(directory)
    for file in sorted([*path.glob("config.json"), *path.glob("*.safetensors"), *path.glob("*.bin")]):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def _part_file(parts: Path, start: int) -> Path:
    return parts / f"{start:07d}.json"


def _open_parts(parts: Path, settings: dict[str, Any]) -> None:
    """Create ``parts`` for a run with ``settings``, or check that an earlier run used the same ones."""
    parts.mkdir(parents=True, exist_ok=True)
    file = parts / SETTINGS
    if file.is_file():
        saved = json.loads(file.read_text())
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ConfigError(f"{parts} holds trajectories decoded with other settings ({', '.join(changed)} "
                              "differ); rerun with the same options or use a new output directory")
    else:
        file.write_text(json.dumps(settings, indent=1))


def _read_part(file: Path, questions: list[str]) -> dict[str, list] | None:
    if not file.is_file():
        return None
    part = json.loads(file.read_text())
    stored = part["rows"]["question"]
    if stored == questions:
        return part
    if len(stored) < len(questions) and stored == questions[:len(stored)]:
        return None  # the last, partial batch of a shorter run: decoded again in full
    raise ConfigError(f"{file} was decoded for other problems (another seed, split or problem file); use a "
                      "new output directory")


def _write_part(file: Path, rows: dict[str, list], seconds: float) -> None:
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": rows, "seconds": seconds}))
    tmp.replace(file)


@torch.inference_mode()
def teacher_trajectories(model: Any, problems: Sequence[Problem], config: TrajectoryConfig = TrajectoryConfig(),
                         *, progress: bool = True, parts: str | Path | None = None,
                         settings: dict[str, Any] | None = None, first: int = 0):
    """Decode every problem with the teacher's standard decode (LLaDA low-confidence, one
    token per step); return every row, right or not, as a ``datasets.Dataset`` (see the
    module docstring for the columns).  :func:`keep_rows` then applies ``config.keep``.

    ``parts``: a directory where each batch of decoded rows is written as soon as it is done
    (``0000064.json`` for the batch starting at problem 64); a rerun reads the batches already
    there instead of decoding them again, so a long decode continues across sessions, and a
    run over more problems of the same sequence reuses the shorter run's batches.  The
    ``settings`` (what decoded them: teacher, decode config, problem source) are kept in
    ``parts/settings.json``; other settings, or a batch holding other questions, are errors.
    :func:`decode_seconds` sums the seconds every session spent on the batches.

    ``first``: decode only the batches from problem ``first`` on (a multiple of the batch size;
    ``parts`` required) and return their rows: a second worker of the same decode writes the
    later batches while the first writes the earlier ones, and a run from 0 then reads them all.
    """
    import datasets
    from tqdm.auto import tqdm

    if not problems:
        raise ConfigError("trajectories: no problems to decode; ask for at least one")
    if first and (parts is None or first % config.batch_size or not 0 < first < len(problems)):
        raise ConfigError(f"decoding from problem {first} needs a parts directory and a start that is a multiple "
                          f"of the batch size ({config.batch_size}) below the {len(problems)} problems")
    folder = None if parts is None else Path(parts)
    if folder is not None:
        _open_parts(folder, {"config": attrs.asdict(config), **(settings or {})})
    rows: dict[str, list] = {k: [] for k in COLUMNS}
    bar = tqdm(total=len(problems) - first, desc="trajectories", disable=not progress, dynamic_ncols=True)
    for start in range(first, len(problems), config.batch_size):
        chunk = problems[start:start + config.batch_size]
        file = None if folder is None else _part_file(folder, start)
        part = None if file is None else _read_part(file, [p.question for p in chunk])
        if part is None:
            began = time.monotonic()
            decoded = _decode_chunk(model, chunk, config)
            part = {"rows": decoded, "seconds": round(time.monotonic() - began, 1)}
            if file is not None:
                _write_part(file, part["rows"], part["seconds"])
        for key in COLUMNS:
            rows[key].extend(part["rows"][key])
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


def decode_seconds(parts: str | Path) -> float:
    """Seconds spent decoding the batches kept in ``parts`` (over every session that made them)."""
    return round(sum(json.loads(f.read_text())["seconds"] for f in sorted(Path(parts).glob("[0-9]*.json"))), 1)


def _decode_chunk(model: Any, chunk: Sequence[Problem], config: TrajectoryConfig) -> dict[str, list]:
    ids, mask = encode_prompts(model, [p.question for p in chunk], chat=config.chat)
    result = decode(model, ids, prompt_mask=mask, strategy=None, gen_length=config.gen_length,
                    block_length=config.block_length, steps=config.gen_length)
    response = result.tokens.cpu()
    lengths = (config.gen_length - trailing_count(response, model.fill_id)).tolist()
    rows: dict[str, list] = {k: [] for k in COLUMNS}
    for i, problem in enumerate(chunk):
        rows["question"].append(problem.question)
        rows["answer"].append(int(problem.answer))
        rows["prompt_ids"].append(ids[i][mask[i]].tolist())
        rows["response_ids"].append(response[i, :lengths[i]].tolist())
        rows["text"].append(result.text[i])
        rows["predicted"].append(final_answer(result.text[i], config.answer_pattern))
        rows["correct"].append(is_correct(result.text[i], problem.answer, config.answer_pattern))
    return rows


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

