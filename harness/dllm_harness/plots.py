"""Benchmark pictures (matplotlib, written as PNG without a display).

* :func:`pareto`: accuracy against mean forward passes, against the answer forwards alone (the
  forwards spent while a row's open block holds answer tokens, docs/metrics.md: what an acceptance
  rule decides, apart from the end-of-text tail) and against seconds per problem, one panel
  row per gen length with every model on it (a teacher and its student side by side); one colour
  per method and one marker and line style per model, a curve through a method's points when it
  has several (its knob values written beside them), one legend entry per method or combination.
* :func:`tpf_curves`: accuracy against TPF per method, with each method's AUP in the legend.
* :func:`trajectory`: for one example, the step at which each response position was committed
  (``DecodeResult.commit_step``), one row per combination.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

_TITLE = 11


def _tasks(results: Sequence[Any]) -> list[tuple[str, int]]:
    return list(dict.fromkeys(r.task for r in results))


def _methods(results: Sequence[Any]) -> dict[str, Any]:
    """A colour per method, stable across panels."""
    names = list(dict.fromkeys(r.entry.method_name for r in results))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _knob_text(entry: Any) -> str:
    """The short name of a point on its method's curve: the knob value, else tokens per step."""
    if entry.knob is not None:
        value = entry.knob_value
        return f"{entry.knob.split('.')[-1]}={value:g}" if isinstance(value, (int, float)) else str(value)
    return f"{entry.gen_length / entry.resolved_steps:g}/step"


# Round numbers a log axis is labelled with, coarsest first: 1, 2, 5 x 10^k, then finer steps.
_MANTISSAS = ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))


def log_ticks(low: float, high: float, least: int = 4, most: int = 10) -> list[float]:
    """Tick values of a log axis over ``[low, high]``: the coarsest round numbers giving at least
    ``least`` ticks, plus a finer one at an end no tick comes within a factor 1.5 of, so points
    bunched near an end (every parallel method at NFE 11 to 12 on an axis up to 256) are read
    against a number; at most ``most`` (thinned evenly between the end ticks); the limits
    themselves when fewer than two round numbers fit."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)

    def level(mantissas: tuple[float, ...]) -> list[float]:
        return sorted(t for t in {round(m * 10.0 ** k, 12) for k in decades for m in mantissas} if low <= t <= high)

    ticks: list[float] = []
    for mantissas in _MANTISSAS:
        ticks = level(mantissas)
        if len(ticks) >= least:
            break
    if len(ticks) < 2:
        return [float(f"{low:.3g}"), float(f"{high:.3g}")]
    # An end without a tick near it gets the coarsest round number that is; one almost on the
    # next tick (within 20%) would only crowd it.
    first = next((t for m in _MANTISSAS for t in level(m) if t <= low * 1.5), None)
    if first is not None and ticks[0] > low * 1.5 and ticks[0] / first >= 1.2:
        ticks.insert(0, first)
    last = next((t for m in _MANTISSAS for t in reversed(level(m)) if t >= high / 1.5), None)
    if last is not None and ticks[-1] < high / 1.5 and last / ticks[-1] >= 1.2:
        ticks.append(last)
    if len(ticks) > most:
        keep = sorted({round(i * (len(ticks) - 1) / (most - 1)) for i in range(most)})
        ticks = [ticks[i] for i in keep]
    return ticks


def _log_axis(ax: Any) -> None:
    """A log x axis labelled with plain round numbers (10, 15, 20, 50 or 1.5, 2, 3, 5) at both
    ends of the data (call it after the points are drawn: the ticks are chosen for the limits)."""
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ax.set_xlim(low, high)  # fixed, so that the ticks chosen for them stay right
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _finish(fig: Any, path: Path) -> Path:
    """Write the PNG (constrained layout keeps titles, labels and legends apart), free the figure."""
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _accuracy_axis(ax: Any, values: Sequence[float]) -> None:
    low, high = min(values), max(values)
    ax.set_ylim(max(0.0, low - 5.0) - 1.0, min(100.0, high + 5.0) + 1.0)


# Per model on a shared panel: its marker and its curves' line style.
_MODEL_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"))


def _draw_method(ax: Any, points: list[tuple[float, float, Any]], colour: Any, label: str,
                 style: tuple[str, str] = _MODEL_STYLES[0]) -> None:
    marker, line = style
    points = sorted(points, key=lambda p: p[0])
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(points) > 1:
        ax.plot(xs, ys, marker=marker, linestyle=line, color=colour, label=label, markersize=6, linewidth=1.5)
        for x, y, entry in points:
            ax.annotate(_knob_text(entry), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=colour)
    else:
        entry = points[0][2]
        ax.plot(xs, ys, "*" if entry.baseline else marker, color=colour, label=label,
                markersize=11 if entry.baseline else 7, linestyle="none")


def _legend_label(members: list[Any]) -> str:
    if len(members) == 1:
        return members[0].entry.display + (" (baseline)" if members[0].entry.baseline
                                           and "baseline" not in members[0].entry.display else "")
    knob = members[0].entry.knob
    return f"{members[0].entry.method_name}" + (f" (over {knob})" if knob else f" ({len(members)} settings)")


def _groups(results: Sequence[Any], task: tuple[str, int]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for r in results:
        if r.task == task:
            groups.setdefault(r.entry.method_name, []).append(r)
    return groups


def pareto(results: Sequence[Any], path: Path) -> Path:
    """Accuracy against mean NFE (left), mean answer forwards (middle) and seconds per problem
    (right), per gen length, every model on the same panels."""
    colours = _methods(results)
    models = list(dict.fromkeys(r.task[0] for r in results))
    styles = {model: _MODEL_STYLES[i % len(_MODEL_STYLES)] for i, model in enumerate(models)}
    gen_lengths = list(dict.fromkeys(r.task[1] for r in results))
    fig, axes = plt.subplots(len(gen_lengths), 3, figsize=(19, 4.6 * len(gen_lengths)), squeeze=False,
                             layout="constrained")
    handles: dict[str, Any] = {}
    panels = (("nfe", "mean forward passes per problem (NFE)"),
              ("answer", "mean answer forwards per problem (the end-of-text tail left out)"),
              ("seconds", "decode seconds per problem"))
    for row, gen_length in enumerate(gen_lengths):
        groups = {model: _groups(results, (model, gen_length)) for model in models}
        for col, (metric, xlabel) in enumerate(panels):
            ax = axes[row][col]
            for model in models:
                for method, members in groups[model].items():
                    points = []
                    for r in members:
                        t = r.totals
                        x = {"nfe": t.mean_nfe, "answer": t.mean_answer_forwards,
                             "seconds": t.seconds / max(t.requests, 1)}[metric]
                        if x is not None:  # a journal written before the answer / tail split has none
                            points.append((max(x, 1e-3), r.accuracy, r.entry))
                    if points:
                        label = _legend_label(members)
                        _draw_method(ax, points, colours[method], f"{model}: {label}" if len(models) > 1 else label,
                                     styles[model])
            _log_axis(ax)
            _accuracy_axis(ax, [r.accuracy for r in results if r.task[1] == gen_length])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"gen length {gen_length}" if len(models) > 1 else f"{models[0]}, gen length {gen_length}",
                         fontsize=_TITLE)
            ax.grid(True, which="both", alpha=0.3)
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right center", fontsize=9,
               title="combination / method")
    fig.suptitle("Accuracy against cost (up and to the left is better)", fontsize=13)
    return _finish(fig, path)


def tpf_curves(results: Sequence[Any], aups: Sequence[dict[str, Any]], path: Path) -> Path:
    """Accuracy against TPF per (model, gen length): one curve per method, AUP in the legend."""
    tasks, colours = _tasks(results), _methods(results)
    aup_of = {(a["model"], a["gen_length"], a["method"]): a["aup"] for a in aups}
    fig, axes = plt.subplots(1, len(tasks), figsize=(9 * len(tasks), 4.8), squeeze=False, layout="constrained")
    for col, task in enumerate(tasks):
        ax = axes[0][col]
        for method, members in _groups(results, task).items():
            points = [(r.totals.tpf, r.accuracy, r.entry) for r in members]
            label = _legend_label(members)
            if (task[0], task[1], method) in aup_of:
                label += f", AUP {aup_of[(task[0], task[1], method)]:.1f}"
            _draw_method(ax, points, colours[method], label)
        _accuracy_axis(ax, [r.accuracy for r in results if r.task == task])
        ax.set_xlabel("tokens per forward (TPF)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task[0]}, gen length {task[1]}", fontsize=_TITLE)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Accuracy against tokens per forward (up and to the right is better)", fontsize=13)
    return _finish(fig, path)


def trajectory(results: Sequence[Any], path: Path, question: str = "") -> Path:
    """Commit step of each response position for one example, one row per combination, per
    (model, gen length); grey: cut by truncation (never committed); x: end-of-text tokens."""
    tasks = [t for t in _tasks(results) if any(r.task == t and r.trajectory for r in results)]
    if not tasks:
        raise ValueError("no trajectory was recorded")
    heights = [sum(1 for r in results if r.task == t and r.trajectory) for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(14, sum(0.45 * h + 1.6 for h in heights)), squeeze=False,
                             gridspec_kw={"height_ratios": [h + 2 for h in heights]}, layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    example = None
    for row, task in enumerate(tasks):
        ax = axes[row][0]
        members = [r for r in results if r.task == task and r.trajectory]
        steps = np.array([r.trajectory.commit_step for r in members], dtype=float)
        example = members[0].trajectory.index
        grid = np.ma.masked_less(steps, 0)
        image = ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest")
        eot = np.array([r.trajectory.eot for r in members])
        ys, xs = np.nonzero(eot & (steps >= 0))
        ax.scatter(xs, ys, marker="x", s=10, color="white", linewidths=0.7, label="end-of-text token")
        ax.set_yticks(range(len(members)), [r.entry.display for r in members], fontsize=8)
        ax.set_xlabel("response position")
        ax.set_title(f"{task[0]}, gen length {task[1]}", fontsize=_TITLE)
        bar = fig.colorbar(image, ax=ax, pad=0.01)
        bar.set_label("step that committed the position", fontsize=8)
        if len(xs):
            ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
    text = question if len(question) <= 110 else question[:107] + "..."
    fig.suptitle(f"Decoding trajectory of problem #{example}: {text}\n(grey: cut by end-of-text truncation, "
                 "never decoded)", fontsize=11)
    return _finish(fig, path)
