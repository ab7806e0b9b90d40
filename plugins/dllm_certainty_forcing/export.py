"""Write the distilled student as a standard checkpoint that ``load_model`` (and the
teacher's own tooling) reads like the teacher.

* A checkpoint loaded natively from a family's own layout (LLaDA, Dream) is written back in
  that layout: the teacher's ``config.json``, tokenizer and other non-weight files copied,
  the weights as safetensors under the family's tensor names (LLaDA's
  ``model.transformer.*``), sharded with an index when large.  The result is a drop-in
  replacement for the teacher, as the authors' released dParallel checkpoints are.
* Any other model (the project's own bidirectional Llamas, ``*ForMaskedLM``) is written with
  transformers' ``save_pretrained`` (safetensors, config) and its tokenizer's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from dllm_strategies.errors import ModelError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MAX_SHARD = "5GB"


def _source_names(family_native: str | None):
    from dllm_strategies.models import native

    if family_native == "llama":
        return native.llada_source_name
    return lambda name: name


def save_student(model: Any, output: str | Path, *, source: str | Path | None) -> Path:
    """Save ``model`` (a :class:`~dllm_strategies.models.DiffusionModel`, LoRA already merged)
    into ``output``; ``source`` is the teacher's checkpoint directory (for native families).

    Raises:
        ModelError: a natively loaded model without its source directory.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    module = model.module
    if model.family.native:
        if source is None or not (Path(source) / "config.json").is_file():
            raise ModelError(f"cannot write {model.family.name} weights in their own layout without the teacher's "
                             f"checkpoint directory (got {source!r}); pass the directory the teacher was loaded from")
        if Path(source).resolve() == output.resolve():
            raise ModelError(f"the student would overwrite its teacher at {output}; choose another output directory")
        _save_native(module, Path(source), output, _source_names(model.family.native))
    else:
        module.save_pretrained(str(output), safe_serialization=True)
        model.tokenizer.save_pretrained(str(output))
    return output


def _save_native(module: torch.nn.Module, source: Path, output: Path, rename) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    for item in source.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in WEIGHT_INDEXES:
            shutil.copy2(item, output / item.name)
    tied = bool(getattr(module.config, "tie_word_embeddings", False))
    state = {rename(name): tensor.detach().contiguous() for name, tensor in module.state_dict().items()
             if not (tied and name == "lm_head.weight")}
    split = split_torch_state_dict_into_shards(state, max_shard_size=MAX_SHARD)
    for old in output.glob("*.safetensors"):
        old.unlink()
    for file_name, names in split.filename_to_tensors.items():
        save_file({name: state[name] for name in names}, str(output / file_name), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (output / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = json.loads((output / "config.json").read_text())
    dtype = next(module.parameters()).dtype
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (output / "config.json").write_text(json.dumps(config, indent=2))
