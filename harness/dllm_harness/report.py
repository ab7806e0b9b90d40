"""Benchmark results as JSON and as a Markdown table (metrics as :mod:`dllm_harness.metrics` defines)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

# "answer NFE" + "tail NFE" = "mean NFE": the mean forwards spent on blocks holding answer tokens
# and on the end-of-text tail (docs/metrics.md); at a long gen length the tail can dominate.
COLUMNS = ("model", "gen", "block", "strategy", "steps", "accuracy %", "mean NFE", "answer NFE", "tail NFE", "TPF",
           "answer TPF", "tokens/s", "speedup", "tail share")
# Shown after "mean NFE" only when an entry ran a block-diffusion model: the passes that wrote
# finished blocks into its exact cache, which NFE does not count.
ENCODER_COLUMN = "encoder passes"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: Sequence[Any], aups: Sequence[dict[str, Any]], meta: dict[str, Any],
             best: Sequence[dict[str, Any]] = ()) -> str:
    """The results table, the AUP of each method with several points, then the best combinations
    (:func:`dllm_harness.bench.best_combinations`)."""
    lines = [f"Benchmark on {meta['problem_set']} (seed {meta['seed']}, batch {meta['batch_size']}, "
             f"{meta['torch_threads']} torch threads). Metrics: docs/metrics.md; answer NFE + tail NFE = mean NFE, "
             "the forwards spent on blocks that hold answer tokens and on blocks that end up all end-of-text; "
             "answer TPF = answer tokens / answer NFE; tail share = the part of the forwards saved against the "
             "baseline that are tail forwards.", ""]
    summaries = [r.summary() for r in results]
    encoder = any(s["mean_encoder_forwards"] for s in summaries)
    columns = list(COLUMNS)
    if encoder:
        columns.insert(columns.index("mean NFE") + 1, ENCODER_COLUMN)
        lines[0] += " Encoder passes: cache writes of a block-diffusion model, not counted in NFE."
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for s in summaries:
        name = f"**{s['label']}**" if s["baseline"] else s["label"]
        speed = "1.00x (baseline)" if s["baseline"] else (f"{s['speedup']:.2f}x" if s["speedup"] else "-")
        cells = [s["model"], str(s["gen_length"]), str(s["block_length"]), name, str(s["steps"]),
                 _number(s["accuracy"], 1), _number(s["mean_nfe"], 1), _number(s["mean_answer_forwards"], 1),
                 _number(s["mean_tail_forwards"], 1), _number(s["tpf"], 2), _number(s["answer_tpf"], 2),
                 _number(s["tokens_per_second"], 1), speed,
                 "-" if s.get("tail_share") is None else f"{100 * s['tail_share']:.0f}%"]
        if encoder:
            cells.insert(columns.index(ENCODER_COLUMN), _number(s["mean_encoder_forwards"], 1))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if aups:
        lines += ["", "AUP (area under the (TPF, accuracy) curve; methods with several points):", "",
                  "| model | gen | method | points | AUP | y_max % |", "|---|---|---|---|---|---|"]
        for row in aups:
            lines.append(f"| {row['model']} | {row['gen_length']} | {row['method']} | {row['points']} | "
                         f"{row['aup']:.2f} | {row['y_max']:.1f} |")
    if best:
        lines.append("")
        for row in best:
            fast, top = row["fastest"], row["best_aup"]
            text = (f"**Best at gen {row['gen_length']}**: fastest within {row['tolerance']:g} point of its baseline's "
                    "accuracy: ")
            text += ("none" if fast is None else
                     f"{fast['label']} on {fast['model']} ({fast['accuracy']:.1f}% vs {fast['baseline_accuracy']:.1f}%, "
                     f"{fast['tokens_per_second']:.1f} tokens/s" + (f", {fast['speedup']:.2f}x)" if fast["speedup"] else ")"))
            if top is not None:
                text += f"; highest AUP: {top['method']} on {top['model']} ({top['aup']:.2f})"
            lines.append(text + ".")
    if len(meta.get("processes") or ()) > 1:
        lines += ["", f"Resumed run: entries were measured by {len(meta['processes'])} processes "
                      f"({', '.join(meta['processes'])}); see journal.jsonl for which measured what."]
    if meta.get("skipped"):
        lines += ["", "Skipped default entries: " + "; ".join(f"{s['entry']} ({s['reason']})" for s in meta["skipped"])]
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[Any], aups: Sequence[dict[str, Any]], meta: dict[str, Any],
            best: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Everything: settings, per-entry summaries, per-problem records and trajectories, AUP rows,
    best combinations."""
    return {
        "meta": meta,
        "entries": [{**r.summary(), "records": [attrs.asdict(x) for x in r.records],
                     "trajectory": attrs.asdict(r.trajectory) if r.trajectory else None} for r in results],
        "aup": list(aups),
        "best": list(best),
    }


def write(out: Path, results: Sequence[Any], aups: Sequence[dict[str, Any]], meta: dict[str, Any],
          best: Sequence[dict[str, Any]] = ()) -> dict[str, Path]:
    """Write ``results.json`` and ``results.md`` into ``out``."""
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(to_json(results, aups, meta, best), indent=1))
    paths["markdown"].write_text(markdown(results, aups, meta, best))
    return paths
