"""Discovery imports a plugin only when it is used: a broken third-party distribution breaks only
the specs that name it.  The plugins docs/writing-a-plugin.md shows (a remasking rule, a forward
plugin, a module observer) install from the doc's own code, are listed, compose with ``eot`` and
pass the kit; plugin objects work from Python without an entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs
import pytest
import torch

import dllm_strategies
from dllm_strategies import SpecError, Strategy, decode, discovery, load_model
from dllm_strategies.cli import main
from dllm_strategies.testing import check_strategy_property

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md"
LOCAL_CHECKPOINT = Path(dllm_strategies.__file__).resolve().parents[1] / "plugins" / "dllm_arith" / "assets" / "default"


def doc_block(first_line: str) -> str:
    """The python block of docs/writing-a-plugin.md whose first line is ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"docs/writing-a-plugin.md has no python block starting with {first_line!r}")


@pytest.fixture
def broken(make_distribution):
    make_distribution("dllm-broken", {"dllm_broken.py": "raise RuntimeError('this plugin is broken')\n"},
                      {"broken": "dllm_broken:Broken"})


def test_a_broken_plugin_breaks_neither_load_model_on_a_path_nor_generate(broken, capsys):
    model = load_model(str(LOCAL_CHECKPOINT), device="cpu")
    assert model.mask_id >= 0
    assert main(["generate", "--model", str(LOCAL_CHECKPOINT), "--gen-length", "8", "--block-length", "8",
                 "--quiet", "Tom has 3 apples . How many apples does Tom have now ?"]) == 0
    assert "steps" in capsys.readouterr().out


def test_naming_a_broken_plugin_fails_with_its_distribution(broken, capsys):
    with pytest.raises(SpecError, match=r"'broken' \(from distribution dllm-broken\) failed to import"):
        Strategy.parse("broken+eot")
    assert main(["generate", "--model", str(LOCAL_CHECKPOINT), "--strategy", "broken", "x"]) == 2
    assert "dllm-broken" in capsys.readouterr().err


def test_plugins_lists_the_working_ones_and_warns_about_the_broken_one(broken, capsys):
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "threshold" in captured.out and "broken" not in captured.out
    assert re.search(r"warning: plugin 'broken' \(from distribution dllm-broken\).*this plugin is broken",
                     captured.err)


def test_the_unknown_name_error_lists_only_strategies():
    with pytest.raises(SpecError) as info:
        Strategy.parse("thresold")
    known = str(info.value).split("Known plugins:")[1]
    assert "threshold" in known and "harness" not in known and "learn2pd" not in known and "arith" not in known


def test_the_documented_module_observer_and_forward_plugin_install_compose_and_pass_the_kit(make_distribution, capsys):
    make_distribution("dllm-commit-log", {"dllm_commit_log.py": doc_block('"""Print how many positions')},
                      {"commit_log": "dllm_commit_log"})
    make_distribution("dllm-no-future", {"dllm_no_future.py": doc_block('"""Feed the prompt and the response')},
                      {"no_future": "dllm_no_future:NoFuture"})
    assert {"commit_log", "no_future"} <= set(discovery.strategy_plugins())
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["commit_log"]["hooks"] == ["dllm_after_step"] and rows["no_future"]["hooks"] == ["dllm_forward"]
    check_strategy_property("no_future+eot", max_examples=5)
    check_strategy_property("commit_log+eot", max_examples=3)
    capsys.readouterr()
    result = decode(load_model("default", device="cpu"), ["Tom has 3 apples . How many apples does Tom have now ?"],
                    strategy="commit_log+no_future+eot", gen_length=32, block_length=32, chat=True)
    assert "after step 1: committed [" in capsys.readouterr().out and "####" in result.text[0]


def test_the_documented_remasking_rule_works_as_a_python_object_beside_an_installed_name():
    namespace: dict = {}
    exec(compile(doc_block('"""Commit every candidate whose top-1'), "writing-a-plugin.md", "exec"), namespace)
    MarginGap = namespace["MarginGap"]
    check_strategy_property([MarginGap(MarginGap.Options(gap=0.3)), "eot"], max_examples=5)
    check_strategy_property([MarginGap, "eot"], max_examples=3)
    strategy = Strategy.parse([MarginGap(MarginGap.Options(gap=0.3)), "eot"])
    assert strategy.names == ["MarginGap", "eot"] and strategy.owners["dllm_remask"] == "MarginGap"
    first, second = strategy.start(), strategy.start()
    assert first.plugins["MarginGap"] is not second.plugins["MarginGap"]  # one fresh instance per run
    assert first.plugins["MarginGap"].options.gap == 0.3


class _Counter(dllm_strategies.Plugin):
    name = "counter"

    @attrs.frozen
    class Options:
        start: int = 0

    def __init__(self, options=None):
        super().__init__(options)
        self.steps = self.options.start

    @dllm_strategies.hookimpl
    def dllm_after_step(self):
        self.steps += 1


def test_a_parsed_strategy_decodes_many_times_without_leaking_per_run_state(tiny):
    strategy = Strategy.parse([_Counter, "threshold(tau=0.9)"])
    assert strategy.spec == "counter+threshold(tau=0.9)"
    for _ in range(2):
        run = strategy.start()
        counter = run.plugins["counter"]
        from dllm_strategies.decode import Run
        from dllm_strategies.state import DecodeConfig, DecodeState

        config = DecodeConfig(gen_length=8, block_length=8, mask_id=tiny.mask_id, fill_id=tiny.fill_id,
                              eot_ids=tiny.eot_ids)
        active = Run.begin(run, tiny, DecodeState.start(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool),
                                                       config))
        while not active.done:
            active.step()
        assert counter.steps == int(active.result().steps[0])  # counted from 0 in each run


@pytest.mark.parametrize("entry, message", [
    (object(), "implements no decoding hook"),
    (3, "bad strategy entry"),
    (_Counter(options=_Counter.Options(start=2)), None),
])
def test_plugin_objects_are_validated_as_installed_ones_are(entry, message):
    if message is None:
        assert Strategy.parse([entry]).names == ["counter"]
    else:
        with pytest.raises(SpecError, match=message):
            Strategy.parse([entry])


def test_a_plugin_object_may_not_take_an_installed_name():
    class Threshold(dllm_strategies.Plugin):
        name = "threshold"

        @dllm_strategies.hookimpl
        def dllm_after_step(self):
            pass

    with pytest.raises(SpecError, match="name of an installed plugin"):
        Strategy.parse([Threshold])
