"""The dllm-strategies command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dllm_strategies.cli import main

BASELINES = {"low_confidence", "random", "margin", "entropy", "gumbel", "threshold", "entropy_threshold", "topk"}


def test_plugins_json_lists_baselines_with_distribution_options_hooks(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert BASELINES <= set(rows)
    assert rows["threshold"]["distribution"] == "dllm-strategies"
    assert rows["threshold"]["options"] == [{"name": "tau", "type": "float", "default": 0.9, "required": False}]
    assert rows["threshold"]["hooks"] == ["dllm_remask"]
    assert rows["gumbel"]["hooks"] == ["dllm_sample", "dllm_start"]
    assert rows["default"]["kind"] == "model"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from dllm_strategies.models.tiny import tiny_model

    model = tiny_model(hidden_size=16, num_layers=1, num_heads=2)
    path = tmp_path_factory.mktemp("tiny")
    model.module.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def test_generate_prints_text_and_costs(checkpoint, capsys):
    code = main(["generate", "--model", str(checkpoint), "--gen-length", "8", "--block-length", "4",
                 "--strategy", "threshold(tau=0.5)", "--json", "Tom has 3 apples .", "Ann has 2 eggs ."])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and {"text", "steps", "nfe", "tokens"} <= set(rows[0])


def test_generate_reports_bad_spec_clearly(checkpoint, capsys):
    assert main(["generate", "--model", str(checkpoint), "--strategy", "thresold", "x"]) == 2
    assert "Did you mean 'threshold'" in capsys.readouterr().err


def test_console_script_and_module_form():
    out = subprocess.run([sys.executable, "-m", "dllm_strategies.cli", "plugins"], capture_output=True, text=True)
    assert out.returncode == 0 and "threshold" in out.stdout
