"""The dllm-strategies command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dllm_arith.tokenizer import build_tokenizer
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

    model = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2)
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


MICRO = ["--train-size", "64", "--batch-size", "4", "--hidden-size", "16", "--layers", "1", "--heads", "2",
         "--intermediate-size", "32", "--gen-lengths", "48", "--gen-length-weights", "1", "--eval-problems", "0",
         "--save-every", "1", "--quiet"]


def test_train_command_smoke_and_export_of_an_unfinished_run(tmp_path, capsys):
    import torch

    from dllm_strategies import decode, load_model
    from dllm_arith import sft

    out = tmp_path / "run"
    assert main(["train", "--output", str(out), "--steps", "2", *MICRO]) == 0
    finished = json.loads((out / "training.json").read_text())
    assert finished["step"] == 2 and finished["finished"] is True
    # An interrupted 4-step run: keep the 2-step checkpoint, relabelled with the 4-step config.
    saved = torch.load(out / "work" / sft.CHECKPOINT, weights_only=False)
    saved["config"]["steps"] = 4
    torch.save(saved, out / "work" / sft.CHECKPOINT)
    (out / "training.json").unlink()
    assert main(["train", "--output", str(out), "--steps", "4", "--export", *MICRO]) == 0
    assert "exported step 2 of 4" in capsys.readouterr().out
    partial = json.loads((out / "training.json").read_text())
    assert partial["step"] == 2 and partial["finished"] is False
    model = load_model(str(out))
    result = decode(model, ["Tom has 3 apples ."], gen_length=8, block_length=8, chat=True)
    assert not (result.tokens == model.mask_id).any()
    assert main(["train", "--output", str(tmp_path / "none"), "--steps", "4", "--export", *MICRO]) != 0


def test_train_a_further_stage_from_a_checkpoint(tmp_path):
    import torch
    from safetensors.torch import load_file

    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--output", str(first), "--steps", "2", *MICRO]) == 0
    # zero steps of a new stage: its weights are exactly the first stage's
    assert main(["train", "--output", str(second), "--steps", "1", "--lr", "0", "--init-from", str(first), *MICRO]) == 0
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    facts = json.loads((second / "training.json").read_text())
    assert facts["init_from"]["path"] == str(first) and facts["init_from"]["training"]["step"] == 2
    assert main(["train", "--output", str(tmp_path / "x"), "--steps", "1", "--init-from", str(tmp_path), *MICRO]) == 2
    assert main(["train", "--output", str(tmp_path / "y"), "--steps", "1", "--hidden-size", "32",
                 "--init-from", str(first), *MICRO[:4], *MICRO[6:]]) == 2
