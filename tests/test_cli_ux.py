"""What a user sees on the command line: progress on long work, one-line errors, Ctrl-C,
warnings, options (help, defaults, spellings), multi-process evaluation, legible plots."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer
from dllm_strategies import ConfigError, Strategy, decode, encode_prompts
from dllm_strategies import cli as cli_module
from dllm_strategies.cli import build_parser, main, run_command
from dllm_strategies.progress import DecodeProgress, ProgressObserver
from dllm_strategies.testing import FakeModel, ScriptedLogits

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from dllm_harness import bench, plots  # noqa: E402
from dllm_harness import eval as launcher  # noqa: E402
from dllm_harness.lm_eval_model import DllmLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from dllm_strategies.models.tiny import tiny_model

    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2)
    path = tmp_path_factory.mktemp("tiny-ux")
    model.module.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm (``disable=None``) draws its bars."""

    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch) -> Terminal:
    """Replace sys.stderr with a terminal; called in the test body (pytest's capture sets sys.stderr
    when the test starts, after fixtures)."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def _counting(progress: DecodeProgress) -> list[int]:
    updates: list[int] = []
    update = progress.bar.update
    progress.bar.update = lambda n=1: (updates.append(n), update(n))[1]
    return updates


# ------------------------------------------------------------------------------------------
# Progress fed by the decode loop's observation hook
# ------------------------------------------------------------------------------------------
def test_progress_moves_every_step_and_counts_every_position():
    model = FakeModel(logits_fn=ScriptedLogits(12), vocab_size=12)
    prompts = [[2, 3, 4], [5, 6]]
    with DecodeProgress(total=2 * len(prompts) * 16, desc="t", disable=False) as progress:
        updates = _counting(progress)
        strategy = progress.track("threshold(tau=0.9)")
        assert strategy.names == ["threshold", "progress"]
        tracked = decode(model, prompts, strategy=strategy, gen_length=16, block_length=8)
        assert progress.bar.n == len(prompts) * 16
        assert len(updates) == int(tracked.steps.max())  # one update per step: the bar moves inside a batch
        decode(model, prompts, strategy=strategy, gen_length=16, block_length=8)
    assert progress.bar.n == 2 * len(prompts) * 16
    plain = decode(model, prompts, strategy="threshold(tau=0.9)", gen_length=16, block_length=8)
    assert torch.equal(plain.tokens, tracked.tokens) and torch.equal(plain.nfe, tracked.nfe)  # it only observes


def test_progress_counts_positions_cut_by_truncation():
    eot_always = FakeModel(logits_fn=lambda ids: torch.nn.functional.one_hot(torch.ones_like(ids), 5).double() * 9,
                           vocab_size=5)
    with DecodeProgress(total=3 * 32, desc="t", disable=False) as progress:
        result = decode(eot_always, [[2, 3], [3], [4, 2, 3]], strategy=progress.track("eot"), gen_length=32,
                        block_length=8)
        assert int(result.steps.max()) < 32 and progress.bar.n == 3 * 32  # cut, yet counted


def test_a_disabled_progress_adds_no_observer(tiny):
    progress = DecodeProgress(total=16, desc="t", disable=True)
    assert progress.track("threshold").names == ["threshold"]
    progress.close()
    assert not DecodeProgress(total=1, desc="t").enabled  # disable=None: pytest's stderr is no terminal
    with pytest.raises(Exception, match="chosen twice"):
        Strategy.parse("threshold").with_plugins(ProgressObserver(ProgressObserver.Options(progress=progress)),
                                                 ProgressObserver(ProgressObserver.Options(progress=progress)))


def test_generate_shows_a_per_position_bar_on_a_terminal_and_none_when_quiet(checkpoint, capsys, monkeypatch):
    terminal = _terminal(monkeypatch)
    args = ["generate", "--model", str(checkpoint), "--gen_length", "8", "--block_length", "4", "--batch_size", "1",
            "Tom has 3 apples .", "Ann has 2 eggs ."]
    assert main(args) == 0
    shown = terminal.getvalue()
    assert "generate:" in shown and "16/16" in shown and "tok" in shown
    terminal.seek(0)
    terminal.truncate()
    assert main([*args, "--quiet"]) == 0
    assert "generate:" not in terminal.getvalue()
    assert capsys.readouterr().out.count("> ") == 4


def test_bench_entry_bar_counts_positions_of_a_task_smaller_than_a_batch(tiny, monkeypatch):
    from dllm_arith import task
    from dllm_harness import matrix

    _terminal(monkeypatch)
    bars = []

    class Recorded(DecodeProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.updates = _counting(self)
            bars.append(self)

    monkeypatch.setattr(bench, "DecodeProgress", Recorded)
    (entry,) = [e for e in matrix.expand([matrix.Entry(spec="threshold(tau=0.5)")], [8], block_length=8) if not e.baseline]
    bench.run_entry(tiny, entry, task.test_problems()[:3], batch_size=32, seed=0, chat=True, example=0)
    # 3 problems x 8 positions in one batch of 32, moved at every step
    assert [(bar.bar.desc, bar.bar.total, bar.bar.n) for bar in bars] == [("threshold(tau=0.5)", 24, 24)]
    assert len(bars[0].updates) >= 2


def test_lm_eval_adapter_bar_counts_positions(tiny, monkeypatch):
    terminal = _terminal(monkeypatch)

    def request(i):
        return Instance(request_type="generate_until", doc={}, arguments=("Tom has 3 apples .", {"until": []}),
                        idx=0, metadata=("t", i, 1))

    DllmLM(pretrained=tiny, gen_length=8, block_length=8, batch_size=4).generate_until([request(i) for i in range(3)])
    assert "dllm generate_until:" in terminal.getvalue() and "24/24" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    DllmLM(pretrained=tiny, gen_length=8, block_length=8, progress="false").generate_until([request(0)])
    assert "%|" not in terminal.getvalue()  # its summary line only


def test_train_says_what_it_builds_before_the_training_bar(tmp_path, monkeypatch):
    terminal = _terminal(monkeypatch)
    from dllm_arith import sft

    seen = []
    monkeypatch.setattr(sft, "train", lambda *a, **k: seen.append(terminal.getvalue()) or [])
    assert main(["train", "--output", str(tmp_path / "run"), "--steps", "1", "--train-size", "40", "--hidden-size",
                 "16", "--layers", "1", "--heads", "2", "--intermediate-size", "32", "--eval-problems", "0"]) == 0
    assert "train: making 40 training and 256 validation problems" in seen[0]
    assert "train: tokenising 296 problems" in seen[0]


# ------------------------------------------------------------------------------------------
# One-line errors, Ctrl-C, warnings
# ------------------------------------------------------------------------------------------
def test_a_missing_or_bad_prompt_file_is_one_line(tmp_path, capsys):
    assert main(["generate", "--file", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --file") and "No such file" in err and err.count("\n") == 1
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n{oops\n')
    assert main(["generate", "--file", str(bad)]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err


def test_ctrl_c_prints_interrupted_exits_130_and_writes_nothing_partial(checkpoint, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "decode", interrupted)
    assert main(["generate", "--model", str(checkpoint), "--gen-length", "8", "--json", "a", "b"]) == 130
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines()[-1] == "interrupted" and "Traceback" not in out.err
    assert run_command(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device"))) == 1
    assert capsys.readouterr().err == "error: [Errno 28] No space left on device\n"


def test_words_outside_the_vocabulary_are_warned_about(checkpoint, tiny, capsys):
    with pytest.warns(UserWarning, match=r"prompt 1: 2 word\(s\) are not in the tokenizer's vocabulary \('zebras', "
                                         r"'Xylophones'\)"):
        encode_prompts(tiny, ["Tom has 3 apples .", "Tom has 3 zebras . Xylophones ?"], chat=True)
    assert main(["generate", "--model", str(checkpoint), "--gen-length", "8", "Ann has 2 zebras ."]) == 0
    err = capsys.readouterr().err
    assert "warning: prompt 0: 1 word(s) are not in the tokenizer's vocabulary ('zebras')" in err


# ------------------------------------------------------------------------------------------
# Validation before loading
# ------------------------------------------------------------------------------------------
def test_block_length_zero_is_an_error_not_the_default(tiny, capsys):
    with pytest.raises(ConfigError, match="block_length must be a positive integer, got 0"):
        decode(tiny, ["Tom has 3 apples ."], gen_length=16, block_length=0)
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "--block-length", "0", "x"])
    assert stopped.value.code == 2 and "--block-length/--block_length: expected an integer >= 1, got 0" in \
        capsys.readouterr().err


def test_lengths_are_checked_before_any_model_loads(tmp_path, capsys):
    missing = str(tmp_path / "no-model")
    assert main(["generate", "--model", missing, "--gen-length", "10", "--block-length", "4", "x"]) == 2
    assert capsys.readouterr().err == ("error: gen_length=10 is not a multiple of block_length=4; use a block_length "
                                       "that divides it (e.g. 5)\n")
    assert bench.main(["--model", missing, "--strategy", "threshold", "--gen-lengths", "24", "--block-length", "16",
                       "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench entry") and "gen_length=24 is not a multiple of block_length=16" in err


# ------------------------------------------------------------------------------------------
# Options: help and true defaults, both spellings, the lm-eval --model habit
# ------------------------------------------------------------------------------------------
def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _shown(default):
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return f"{default:g}" if isinstance(default, float) else str(default)


@pytest.mark.parametrize("command", ["plugins", "generate", "train", "bench", "eval"])
def test_every_option_has_help_that_names_its_true_default(command):
    parser = _subparser(command)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or action.dest.startswith("lm_eval__"):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        default = action.default
        if default not in (None, False, True, argparse.SUPPRESS):
            rendered = action.help % {"default": _shown(default)} if "%(default)" in action.help else action.help
            assert _shown(default) in rendered, f"{command} {action.option_strings[0]}: default {default!r} not in help"
    helps = {a.dest: a.help for a in parser._actions}
    if command == "eval":
        assert "default: 16" in helps["lm_eval__batch_size"] and "cuda when available" in helps["lm_eval__device"]
    if command == "bench":
        from dllm_harness import matrix

        assert all(matrix.method_of(s.split("@")[0]) in helps["sweep"] for s in matrix.DEFAULT_SWEEPS)


def test_multi_word_options_take_both_spellings():
    parse = build_parser().parse_args
    for command, extra in (("generate", ["x"]), ("bench", []), ("eval", ["--tasks", "t"])):
        dashes = parse([command, "--gen-length" if command != "bench" else "--gen-lengths", "32", "--block-length",
                        "8", *extra])
        underscores = parse([command, "--gen_length" if command != "bench" else "--gen_lengths", "32",
                             "--block_length", "8", *extra])
        assert vars(dashes) == vars(underscores)
    assert parse(["generate", "--batch_size", "3", "x"]).batch_size == 3
    assert parse(["bench", "--batch_size", "3"]).batch_size == 3


def test_eval_model_naming_an_lm_eval_model_type_gets_a_hint(capsys):
    assert main(["eval", "--model", "dllm", "--tasks", "dllm_arith"]) == 2
    err = capsys.readouterr().err
    assert "--model 'dllm' is an lm-eval model type" in err and "leave --model out" in err


def test_eval_runs_lm_eval_without_git_noise(tmp_path, monkeypatch, capfd):
    import lm_eval.__main__
    import lm_eval.evaluator

    monkeypatch.chdir(tmp_path)  # not a git repository
    seen = {}

    def fake_cli():
        seen["hash"] = lm_eval.evaluator.get_git_commit_hash()
        seen["argv"] = list(sys.argv)

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake_cli)
    assert launcher.main(["--tasks", "dllm_arith", "--quiet", "--block-length", "8"]) == 0
    assert "fatal" not in capfd.readouterr().err and seen["hash"] is None
    model_args = json.loads(seen["argv"][seen["argv"].index("--model_args") + 1])
    assert model_args["progress"] is False and model_args["block_length"] == 8
    assert lm_eval.evaluator.get_git_commit_hash is not launcher.quiet_git_hash  # restored after the run


# ------------------------------------------------------------------------------------------
# Multi-process evaluation
# ------------------------------------------------------------------------------------------
def test_accelerate_falling_back_to_one_process_is_warned_about(tiny, monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    with caplog.at_level(logging.WARNING, logger="dllm_harness"):
        DllmLM(pretrained=tiny)
    assert "asked for several processes but this is the only one" in caplog.text
    caplog.clear()
    monkeypatch.delenv("MASTER_ADDR")  # accelerate launch of one process: nothing to say
    with caplog.at_level(logging.WARNING, logger="dllm_harness"):
        DllmLM(pretrained=tiny)
    assert "several processes" not in caplog.text


def _samples(out: Path) -> dict[tuple[int, str], list]:
    (path,) = out.rglob("samples_dllm_arith_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(row["doc_id"], row["filter"]): (row["resps"], row["filtered_resps"]) for row in rows}


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun_match_one_process(tmp_path):
    """``torchrun --nproc_per_node 2`` on CPU (gloo) gives each process half the documents and
    the same answers and score as one process (about 2 minutes on 2 CPU cores: lm-eval starts twice)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    common = ["-m", "dllm_harness.eval", "--model", "default", "--tasks", "dllm_arith", "--limit", "4",
              "--gen-length", "32", "--block-length", "32", "--device", "cpu", "--batch_size", "2", "--log_samples",
              "--quiet"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, launch in (("one", [sys.executable]), ("two", [torchrun, "--nproc_per_node", "2"])):
        out = tmp_path / name
        done = subprocess.run([*launch, *common, "--output_path", str(out)], capture_output=True, text=True,
                              env=env, timeout=900, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(next(out.rglob("results_*.json")).read_text())
        runs[name] = (_samples(out), results["results"]["dllm_arith"], results["config"]["dllm"]["world_size"])
    assert runs["one"][2] == 1 and runs["two"][2] == 2
    assert runs["two"][0] == runs["one"][0] and {doc for doc, _ in runs["one"][0]} == {0, 1, 2, 3}
    assert runs["two"][1] == runs["one"][1]


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------
def test_log_axes_label_both_ends_of_the_data():
    import matplotlib.pyplot as plt

    fig, (nfe, seconds) = plt.subplots(1, 2)
    nfe.plot([11, 11.5, 12, 64, 256], [80, 81, 82, 85, 86], "o")
    seconds.plot([1.6, 2.4, 6.2], [80, 81, 82], "o")
    for ax in (nfe, seconds):
        plots._log_axis(ax)
    fig.canvas.draw()
    nfe_ticks = [t for t in nfe.get_xticks() if nfe.get_xlim()[0] <= t <= nfe.get_xlim()[1]]
    assert min(nfe_ticks) < 16 and max(nfe_ticks) >= 200
    labels = [label.get_text() for label in seconds.get_xticklabels()]
    assert len(labels) >= 4 and all(re.fullmatch(r"\d+(\.\d+)?", text) for text in labels), labels
    plt.close(fig)
    assert plots.log_ticks(10.3, 270) == [15, 20, 50, 100, 200]
    assert plots.log_ticks(11, 12) == [11, 12]  # no round number fits: the limits
