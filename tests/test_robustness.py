"""Robustness: fuzzed specs raise only SpecError; a plugin that raises or an interrupt mid-run
leaves no result behind; the memory benchmark runs."""

from __future__ import annotations

import json

import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dllm_strategies import PluginError, SpecError, build_strategy, decode, parse_spec
from dllm_strategies.testing import FakeModel, ScriptedLogits

SPEC_ALPHABET = "abcdefghijklmnopqrstuvwxyz_-.0123456789()+!=,'\" eE\t\u00e9\u4e2d"
KNOWN = ["threshold", "entropy_threshold", "topk", "margin", "gumbel", "random", "low_confidence"]


def spec_texts():
    """Random text, and text assembled from real names, options and stray syntax."""
    raw = st.text(alphabet=SPEC_ALPHABET, max_size=40)
    value = st.one_of(st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                      st.sampled_from(["true", "none", "'x'", '"0.5"', "abc", "", "1e999", "-0", "("]))
    option = st.tuples(st.sampled_from(["tau", "k", "temperature", "t", "", "tau=1"]), value).map(
        lambda kv: f"{kv[0]}={kv[1]}")
    item = st.tuples(st.sampled_from(KNOWN + ["nope", "", "thresh"]), st.lists(option, max_size=3),
                     st.sampled_from(["", "!", "()", "!!", ")"])).map(
        lambda t: f"{t[0]}({','.join(t[1])}){t[2]}" if t[1] else f"{t[0]}{t[2]}")
    built = st.lists(item, min_size=1, max_size=3).map("+".join)
    return st.one_of(raw, built)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=spec_texts())
def test_fuzzed_specs_raise_only_spec_errors(text):
    try:
        build_strategy(text)
    except SpecError as exc:
        assert str(exc)  # every error says something
    # any other exception type fails the test


@settings(max_examples=150, deadline=None)
@given(items=st.lists(st.one_of(
    st.tuples(st.sampled_from(KNOWN + ["nope"]), st.dictionaries(
        st.sampled_from(["tau", "k", "temperature", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.floats(allow_nan=True), st.text(max_size=3),
                  st.lists(st.integers(), max_size=2)), max_size=2)),
    st.integers(), st.none(), st.text(max_size=5)), max_size=3))
def test_fuzzed_list_specs_raise_only_spec_errors(items):
    try:
        build_strategy(items)
    except SpecError:
        pass


def test_parse_error_points_at_the_position():
    with pytest.raises(SpecError, match=r"expected a value at position 14\n  threshold\(tau=\)\n {16}\^$"):
        parse_spec("threshold(tau=)")


PLUGINS = '''
import dllm_strategies
from dllm_strategies import hookimpl


class LateFailure(dllm_strategies.Plugin):
    """Raises in its observer at step 3, after some tokens were committed."""

    @hookimpl
    def dllm_after_step(self, state):
        if state.step == 3:
            raise ValueError("late")


class Interrupt(dllm_strategies.Plugin):
    @hookimpl
    def dllm_after_step(self, state):
        if state.step == 2:
            raise KeyboardInterrupt
'''


@pytest.fixture
def failing(make_distribution):
    make_distribution("dllm-failing", {"dllm_failing.py": PLUGINS},
                      {"late_failure": "dllm_failing:LateFailure", "interrupt": "dllm_failing:Interrupt"})


def _fake() -> FakeModel:
    return FakeModel(logits_fn=ScriptedLogits(40), vocab_size=40)


def test_plugin_failing_mid_run_names_itself_and_returns_nothing(failing):
    model = _fake()
    with pytest.raises(PluginError, match="plugin 'late_failure' raised ValueError in dllm_after_step: late") as info:
        decode(model, [[5, 6], [7]], strategy="late_failure+threshold", gen_length=16, block_length=8)
    assert (info.value.plugin, info.value.hook) == ("late_failure", "dllm_after_step")
    assert len(model.calls) == 3  # it failed mid-run, and no result object escaped


def test_interrupt_propagates_unwrapped_and_returns_nothing(failing):
    with pytest.raises(KeyboardInterrupt):
        decode(_fake(), [[5, 6], [7]], strategy="interrupt", gen_length=16, block_length=8)


def test_interrupted_cli_json_prints_no_partial_results(failing, tmp_path, capsys, monkeypatch):
    from dllm_strategies import cli
    from dllm_strategies.models.tiny import tiny_model

    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2)
    monkeypatch.setattr("dllm_strategies.load_model", lambda *a, **k: model)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Tom has 3 apples .\nAnn has 2 eggs .\nSam has 4 cards .\n")
    # Ctrl-C: "interrupted" and the shell's exit code for SIGINT, no traceback, nothing partial
    assert cli.main(["generate", "--file", str(prompts), "--strategy", "interrupt", "--gen-length", "8",
                     "--batch-size", "1", "--json", "--quiet"]) == 130
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines()[-1] == "interrupted"
    # the same command without the interrupt prints every row, as JSON
    cli.main(["generate", "--file", str(prompts), "--gen-length", "8", "--batch-size", "2", "--json", "--quiet"])
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_memory_benchmark_runs_small():
    from dllm_harness.bench_memory import measure

    report = measure(batch=2, gen_length=64, block_length=32, hidden=16, layers=1, spec="threshold", repeats=2)
    assert report["steps"] > 0 and report["peak_rss_mb"] >= report["start_rss_mb"] > 0
    assert len(report["rss_per_run_mb"]) == 2
    assert torch.isfinite(torch.tensor(report["rss_growth_per_step_kb"]))
