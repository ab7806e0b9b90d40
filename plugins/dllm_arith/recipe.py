"""The recipe of the shipped default model: data, architecture, training, saving.

``train_default(output_dir)`` makes a standard transformers checkpoint (safetensors,
config, tokenizer) of a LLaDA-style model: Llama blocks with bidirectional attention
(``LlamaConfig(is_causal=False)``), trained with :mod:`dllm_arith.sft` on
the synthetic task of :mod:`dllm_arith.task`.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch

from dllm_arith import sft, task, tokenizer as arith_tokenizer
from dllm_strategies.models.tiny import bidirectional_llama_config


@attrs.frozen
class ModelShape:
    """Size of the Llama blocks."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    max_position_embeddings: int = 512


def model_config(tok, shape: ModelShape = ModelShape()):
    """The default model's architecture: LLaDA-style bidirectional Llama blocks of ``shape``."""
    return bidirectional_llama_config(tok, **attrs.asdict(shape))


def encode(problems, tok) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per problem: chat prompt, solution + end-of-turn."""
    prompts = [arith_tokenizer.prompt_text(p["question"], tok) for p in problems]
    responses = [arith_tokenizer.response_text(p["solution"]) for p in problems]
    prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tok(responses, add_special_tokens=False)["input_ids"]
    return list(zip(prompt_ids, response_ids, strict=True))


def train_default(output_dir: str | Path, *, train_size: int = 400_000, validation_size: int = 256,
                  difficulty: task.Difficulty = task.Difficulty(), shape: ModelShape = ModelShape(),
                  config: sft.TrainConfig = sft.TrainConfig(), evaluate=None, progress: bool = True,
                  log=None, init_from: str | Path | None = None, status=None):
    """Train the default model into ``output_dir`` (resumable; see :func:`sft.train`).

    ``status(stage)`` (optional) is told each stage of building the data (minutes at the default
    size), then ``status(None)`` when training starts.

    ``init_from``: a checkpoint of this recipe (a directory with ``model.safetensors``) whose
    weights start the run instead of a random initialisation: a further training stage with a
    schedule of its own.  Its ``training.json`` is kept in this run's as ``init_from``.
    """
    from transformers import LlamaForCausalLM

    output_dir = Path(output_dir)
    torch.manual_seed(config.seed)
    tok = arith_tokenizer.build_tokenizer()
    say = status or (lambda stage: None)
    say(f"making {train_size:,} training and {validation_size:,} validation problems")
    splits = task.make_splits(train_size, validation_size, seed=config.seed, difficulty=difficulty)
    model = LlamaForCausalLM(model_config(tok, shape))
    previous = _initialise(model, Path(init_from)) if init_from is not None else None
    say(f"tokenising {train_size + validation_size:,} problems")
    pairs = encode(splits["train"], tok), encode(splits["validation"], tok)
    say(None)
    records = sft.train(
        model, *pairs,
        mask_id=tok.mask_token_id, pad_id=tok.pad_token_id, fill_id=tok.eos_token_id,
        output_dir=output_dir / "work", config=config, evaluate=evaluate, progress=progress, log=log,
        data=training_data(difficulty, train_size, validation_size),
    )
    _save(output_dir, model, tok, difficulty=difficulty, shape=shape, config=config, train_size=train_size,
          records=records, step=config.steps, previous=previous)
    return model, tok, records


def training_data(difficulty: task.Difficulty, train_size: int, validation_size: int = 256) -> dict:
    """What a run's training pairs are made from (saved with its checkpoint: a resume with other
    data is refused)."""
    return {"difficulty": attrs.asdict(difficulty), "train_size": train_size, "validation_size": validation_size}


def _initialise(model, source: Path) -> dict:
    """Load ``source``'s weights into ``model``; returns its provenance for ``training.json``."""
    from safetensors.torch import load_file

    from dllm_strategies.errors import ConfigError

    weights = source / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"--init-from {source}: no model.safetensors there; give a checkpoint directory "
                          "written by `dllm-strategies train`")
    try:
        model.load_state_dict(load_file(weights))
    except RuntimeError as exc:
        raise ConfigError(f"--init-from {source}: its weights do not fit this model shape "
                          f"(use the same --hidden-size/--layers/--heads/--intermediate-size): {exc}") from exc
    return _provenance(source)


def _provenance(source: Path) -> dict:
    """What ``training.json`` keeps of the checkpoint a stage started from: its path and its own
    ``training.json`` (None when it has none)."""
    meta = source / "training.json"
    return {"path": str(source), "training": json.loads(meta.read_text()) if meta.is_file() else None}


def _save(output_dir: Path, model, tok, *, difficulty: task.Difficulty, shape: ModelShape,
          config: sft.TrainConfig, train_size: int, records: list, step: int, previous: dict | None = None) -> None:
    model.save_pretrained(output_dir, safe_serialization=True)
    tok.save_pretrained(output_dir)
    facts = {"difficulty": attrs.asdict(difficulty), "shape": attrs.asdict(shape),
             "config": attrs.asdict(config), "train_size": train_size, "step": step,
             "finished": step == config.steps, "records": records}
    if previous is not None:
        facts["init_from"] = previous
    (output_dir / "training.json").write_text(json.dumps(facts, indent=1))


def export_checkpoint(output_dir: str | Path, *, train_size: int, difficulty: task.Difficulty,
                      shape: ModelShape, config: sft.TrainConfig, init_from: str | Path | None = None) -> int:
    """Write the latest resumable checkpoint of a run (``output_dir/work``) as a standard
    checkpoint in ``output_dir`` without training; ``training.json`` records the step it was
    taken at and whether the run had finished.  Returns that step."""
    from transformers import LlamaForCausalLM

    output_dir = Path(output_dir)
    saved = sft.load_checkpoint(output_dir / "work", config, training_data(difficulty, train_size))
    tok = arith_tokenizer.build_tokenizer()
    model = LlamaForCausalLM(model_config(tok, shape))
    model.load_state_dict(saved["model"])
    previous = _provenance(Path(init_from)) if init_from is not None else None
    _save(output_dir, model.eval(), tok, difficulty=difficulty, shape=shape, config=config,
          train_size=train_size, records=saved["records"], step=saved["step"], previous=previous)
    return saved["step"]
