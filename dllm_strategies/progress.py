"""Progress of long work: a bar over decoded response positions fed by the decode loop's own
observation hook, and a status line for the stages that are not decoding.

    with DecodeProgress(total=len(prompts) * gen_length, desc="generate", disable=quiet or None) as progress:
        strategy = progress.track(Strategy.parse(spec))   # the user's strategy + a ProgressObserver
        for batch in batches:
            result = decode(model, batch, strategy=strategy, gen_length=gen_length)

The bar counts decided positions, ``rows x gen_length`` for each decode: committed, or cut by
End-of-Text truncation, or filled when a row stops early; a position a revocable plugin re-masks
counts down again.  A run's positions the loop decided without a step the observer saw (a
block-autoregressive model ending a row's text) are counted when the next run starts or the
bar closes, so every finished batch counts in full.

As tqdm does, ``disable=None`` turns the bar off when stderr is not a terminal and
``disable=True`` (a command's ``--quiet``) always; a disabled progress adds no observer, so
decoding then costs nothing extra (the observer reads one number per step from the device).
"""

from __future__ import annotations

import sys
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from dllm_strategies.hookspecs import hookimpl
from dllm_strategies.plugin import PROCESSES, Plugin
from dllm_strategies.state import DecodeState
from dllm_strategies.strategy import Strategy


class DecodeProgress:
    """A tqdm bar over the response positions of many decode calls (see the module docstring).

    Args:
        total: positions of all the work, the sum of ``rows x gen_length`` over its decodes.
        desc: the bar's label.
        disable: True: no bar; None: a bar only when stderr is a terminal; False: always.
        leave: keep the finished bar on screen (False for a bar nested in another).
    """

    def __init__(self, total: int, *, desc: str, disable: bool | None = None, leave: bool = True):
        self.bar = tqdm(total=total, desc=desc, disable=disable, leave=leave, unit="tok",
                        file=sys.stderr, dynamic_ncols=True)
        self._run_total = 0
        self._run_done = 0

    @property
    def enabled(self) -> bool:
        return not self.bar.disable

    def track(self, strategy: Any) -> Strategy:
        """``strategy`` (a spec or a parsed :class:`Strategy`) with this bar's observer added, or
        parsed as is when the bar is off."""
        strategy = Strategy.parse(strategy)
        if not self.enabled:
            return strategy
        return strategy.with_plugins(ProgressObserver(ProgressObserver.Options(progress=self)))

    def begin_run(self, positions: int) -> None:
        """A decode of ``positions`` (rows x gen_length) starts; the previous one is complete."""
        self.finish_run()
        self._run_total, self._run_done = positions, 0

    def advance(self, positions: int) -> None:
        """``positions`` more decided in the current run (negative: re-masked)."""
        if positions:
            self._run_done += positions
            self.bar.update(positions)

    def finish_run(self) -> None:
        """Count what is left of the current run: it returned, so all its positions are decided."""
        rest = self._run_total - self._run_done
        if rest:
            self.bar.update(rest)
        self._run_total = self._run_done = 0

    def write(self, text: str) -> None:
        """Print ``text`` to stdout without breaking the bar."""
        tqdm.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> DecodeProgress:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:  # on an error or Ctrl-C the bar stops where the work stopped
            self.finish_run()
        self.close()


class ProgressObserver(Plugin):
    """A strategy plugin that reports each step's newly decided positions to a :class:`DecodeProgress`.

    It only observes (``dllm_after_step``), so any strategy can carry it; callers add it with
    :meth:`DecodeProgress.track` (:meth:`Strategy.with_plugins` underneath).
    """

    name = "progress"
    processes = PROCESSES

    @attrs.frozen
    class Options:
        progress: DecodeProgress = attrs.field(eq=False)

    def __init__(self, options: Options):
        super().__init__(options)
        self._decided: torch.Tensor | None = None

    @hookimpl
    def dllm_start(self, state: DecodeState) -> None:
        self._decided = torch.zeros(state.batch_size, dtype=torch.long, device=state.device)
        self.options.progress.begin_run(state.batch_size * state.config.gen_length)

    @hookimpl
    def dllm_after_step(self, state: DecodeState) -> None:
        G = state.config.gen_length
        decided = torch.where(state.finished, G, G - state.masked.sum(1))
        delta = decided - self._decided[state.rows]
        self._decided[state.rows] = decided
        self.options.progress.advance(int(delta.sum()))


class StatusLine:
    """One line on stderr saying which stage of a long command runs (building data, tokenising...),
    rewritten in place with the elapsed time; off as a :class:`DecodeProgress` is off."""

    def __init__(self, desc: str, *, disable: bool | None = None):
        self.bar = tqdm(total=None, desc=desc, disable=disable, file=sys.stderr, bar_format="{desc} [{elapsed}]",
                        dynamic_ncols=True)
        self.desc = desc

    def __call__(self, stage: str | None) -> None:
        """Show ``stage``; None: the stages are over (the line stays, with the time they took)."""
        if stage is None:
            self.close()
        else:
            self.bar.set_description_str(f"{self.desc}: {stage}")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
