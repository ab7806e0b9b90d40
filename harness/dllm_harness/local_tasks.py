"""The project's own lm-eval tasks, rendered for lm-eval at run time.

lm-eval resolves relative ``data_files`` against the working directory, so the YAML files under
``dllm_harness/tasks/<task>/`` are templates: :func:`render_tasks` writes them into a directory
with absolute paths (and the answer regex of :mod:`dllm_arith.task`), plus the
multiple-choice data file it builds from the held-out split.  Both tasks read local JSON files
only (``dataset_path: json``), so they run with ``HF_DATASETS_OFFLINE=1``.

* ``dllm_arith``: generate a worked solution for each held-out problem; ``exact_match`` of the
  ``#### N`` number (``strict-match``, the same regex as ``dllm_arith.task.extract_answer``)
  and of the last number in the text (``flexible-extract``), as lm-eval's GSM8K does.
* ``dllm_arith_mc``: the gold worked solution against three copies whose last step and final answer
  are wrong (off by 1 to 3), scored by log-likelihood (``acc``).
* ``dllm_arith_long``: ``dllm_arith`` on the long-answer variant's held-out split (task
  ``arith-long``: solutions of 67 to 116 tokens).
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from dllm_strategies import discovery
from dllm_strategies.errors import ConfigError

TEMPLATES = Path(__file__).parent / "tasks"
TASK = "arith"  # the registered task (dllm_tasks hook) these lm-eval tasks are rendered from
LONG_TASK = "arith-long"  # ... and the registered long-answer variant dllm_arith_long is rendered from
LOCAL_TASKS = ("dllm_arith", "dllm_arith_mc", "dllm_arith_long")
MC_SEED = 7
MC_WRONG = 3
_OFFSETS = (-3, -2, -1, 1, 2, 3)


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are a subset of YAML's)."""
    return json.dumps(value)


def wrong_solution(problem: Any, wrong: int) -> str:
    """``problem.solution`` with its last result and final answer replaced by ``wrong``."""
    ending = f"= {problem.answer} . #### {problem.answer}"
    if not problem.solution.endswith(ending):
        raise ConfigError(f"solution {problem.solution!r} does not end with {ending!r}; "
                          "the multiple-choice task needs the synthetic task's solution format")
    return f"{problem.solution[:-len(ending)]}= {wrong} . #### {wrong}"


def mc_choices(problem: Any, rng: random.Random) -> tuple[list[str], int]:
    """Four solutions (the gold one at a random place) and the gold one's index."""
    candidates = [problem.answer + d for d in _OFFSETS if problem.answer + d >= 0]
    wrong = rng.sample(candidates, MC_WRONG)
    label = rng.randrange(MC_WRONG + 1)
    choices = [wrong_solution(problem, w) for w in wrong]
    choices.insert(label, problem.solution)
    return choices, label


def mc_rows(problems: Sequence[Any], seed: int = MC_SEED) -> list[dict]:
    """The multiple-choice documents, deterministic in ``seed``."""
    rng = random.Random(seed)
    rows = []
    for problem in problems:
        choices, label = mc_choices(problem, rng)
        rows.append({**problem.to_dict(), "choices": choices, "label": label})
    return rows


@attrs.frozen
class RenderedTasks:
    """Task YAMLs ready for lm-eval.

    Attributes:
        directory: where they are (pass it as ``include_path``).
        files: task name -> its YAML file.
    """

    directory: Path
    files: dict[str, Path]

    def task_manager(self, include_defaults: bool = False):
        """An lm-eval ``TaskManager`` that knows these tasks (and lm-eval's own when asked)."""
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=str(self.directory), include_defaults=include_defaults)


def render_tasks(directory: str | Path, test_file: str | Path | None = None) -> RenderedTasks:
    """Write the local tasks into ``directory`` with absolute paths (``test_file``: the registered
    task's held-out split by default)."""
    task = discovery.task(TASK)
    directory = Path(directory).resolve()
    test_file = Path(test_file if test_file is not None else task.TEST_FILE).resolve()
    if not test_file.is_file():
        raise ConfigError(f"held-out file {test_file} does not exist; regenerate it with "
                          "dllm_arith.task.write_test_split()")
    with test_file.open() as f:
        problems = [task.Problem(**json.loads(line)) for line in f if line.strip()]
    mc_file = directory / "dllm_arith_mc" / "dllm_arith_mc.jsonl"
    mc_file.parent.mkdir(parents=True, exist_ok=True)
    with mc_file.open("w") as f:
        for row in mc_rows(problems):
            f.write(json.dumps(row) + "\n")
    values = {"@TEST_FILE@": _yaml_string(str(test_file)), "@MC_FILE@": _yaml_string(str(mc_file)),
              "@ANSWER_REGEX@": _yaml_string(task.ANSWER_RE.pattern)}
    long_file = Path(discovery.task(LONG_TASK).TEST_FILE).resolve()
    files = {}
    for name in LOCAL_TASKS:
        template = "dllm_arith" if name == "dllm_arith_long" else name
        text = (TEMPLATES / template / f"{template}.yaml").read_text()
        own = {"@TASK@": name}
        if name == "dllm_arith_long":
            own["@TEST_FILE@"] = _yaml_string(str(long_file))
        for key, value in {**values, **own}.items():
            text = text.replace(key, value)
        out = directory / name / f"{name}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        files[name] = out
    return RenderedTasks(directory=directory, files=files)


@contextmanager
def rendered_tasks(test_file: str | Path | None = None) -> Iterator[RenderedTasks]:
    """The local tasks rendered into a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dllm-tasks-") as tmp:
        yield render_tasks(tmp, test_file)
