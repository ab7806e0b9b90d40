"""load_model on the project's own checkpoints, MaskedLM models and bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer

from dllm_strategies import ModelError, decode, load_model


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch):
    monkeypatch.setattr("dllm_strategies.models.loading._registered_models", lambda: {})


def _save_bert(path, with_mask: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[SEP]", "[CLS]"] + (["[MASK]"] if with_mask else []) + [f"w{i}" for i in range(40)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", sep_token="[SEP]",
                                  cls_token="[CLS]", **({"mask_token": "[MASK]"} if with_mask else {}))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                       eos_token_id=2))
    model.save_pretrained(path)
    tok.save_pretrained(path)


def test_masked_lm_loads_and_decodes(tmp_path):
    _save_bert(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    assert model.family.name == "masked_lm" and model.mask_id == 4
    with torch.no_grad():
        result = decode(model, ["w1 w2 w3", "w4"], gen_length=6, block_length=3)
    assert not (result.tokens == model.mask_id).any()
    with torch.no_grad():
        alone = decode(model, ["w4"], gen_length=6, block_length=3)
    assert torch.equal(result.tokens[1], alone.tokens[0])


def test_tokenizer_without_mask_token_is_a_clear_error(tmp_path):
    _save_bert(tmp_path, with_mask=False)
    with pytest.raises(ModelError, match="no mask token"):
        load_model(str(tmp_path), device="cpu")


def test_project_checkpoint_round_trip(tmp_path):
    from dllm_strategies.models.tiny import tiny_model

    tiny = tiny_model(tokenizer=build_tokenizer(), hidden_size=16, num_layers=1, num_heads=2)
    tiny.module.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    assert model.family.name == "bidirectional"
    assert (model.mask_id, model.eot_ids, model.fill_id) == (tiny.mask_id, tiny.eot_ids, tiny.fill_id)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(model.logits(ids), tiny.logits(ids))


def test_unknown_family_needs_explicit_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery", "architectures": ["MysteryLM"]}))
    _save_bert(tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((tmp_path / "tok" / name).read_text())
    with pytest.raises(ModelError, match="not a known diffusion LM family.*trust_remote_code=True"):
        load_model(str(tmp_path), device="cpu")


def test_moe_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada_moe"}))
    with pytest.raises(ModelError, match="mixture-of-experts"):
        load_model(str(tmp_path), device="cpu")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="cannot find model"):
        load_model(str(tmp_path / "nope"), device="cpu")


def test_registered_model_whose_files_are_missing_names_its_plugin(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr("dllm_strategies.models.loading._registered_models", lambda: {
        "ghost": {"path": Path(tmp_path / "absent"), "strategy": None, "block_length": None,
                  "description": "a model made by `dllm-strategies make-ghost`", "source": "dllm-ghost:ghost"}})
    with pytest.raises(ModelError, match=r"model 'ghost' is registered by dllm-ghost:ghost at .*absent, which does "
                                         r"not exist \(a model made by `dllm-strategies make-ghost`\)"):
        load_model("ghost", device="cpu")
