"""Refactoring the core changes no decode: a handful of prompts, decoded by the shipped models
with several strategies, give exactly the tokens and forward counts recorded before the core was
split (tests/data/pinned_decodes.json, written by that code).  ``eot`` now follows Learn2PD's
authors by default; its earlier rules, pinned here, are the options
``eot(committed=any,predicted_mask=after)``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dllm_strategies import decode, load_model

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_decodes.json").read_text())
PROMPTS = PINNED.pop("prompts")


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name, device="cpu") for name in ("default", "default-dparallel")}


@pytest.mark.parametrize("key", sorted(PINNED))
def test_decodes_equal_the_pinned_ones(models, key):
    name, spec = key.split("|", 1)
    with torch.inference_mode():
        result = decode(models[name], PROMPTS, strategy=spec, gen_length=64, block_length=32, chat=True)
    assert result.tokens.tolist() == PINNED[key]["tokens"]
    assert result.nfe.tolist() == PINNED[key]["nfe"]
