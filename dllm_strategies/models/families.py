"""Facts about the model families dllm-strategies knows, in one table.

A family is recognised from a checkpoint's ``config.json`` (``model_type``, and for plain
transformers classes ``is_causal``/``architectures``).  Its facts say which ids mean mask,
end-of-text and end-of-turn, which token fills positions cut by end-of-text truncation,
whether the logits are shifted (position i scoring token i+1, as in Dream), and which of
transformers' own classes the checkpoint loads onto natively (no remote code).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Family:
    """Facts of one model family.

    Attributes:
        name: short name (``llada``, ``dream``, ...).
        model_types: ``config.json`` ``model_type`` values that identify it.
        mask_id / eot_ids / fill_id: default special ids (``None``: from config and tokenizer).
            ``eot_ids`` are end-of-text first, then end-of-turn; ``fill_id`` fills cut positions.
        shifted: the checkpoint's logits at position i score token i+1 (re-aligned by the adapter).
        native: the transformers class the weights load onto (``llama``, ``qwen2``), or None.
        members: released checkpoints known to share the architecture (documentation).
    """

    name: str
    model_types: tuple[str, ...]
    mask_id: int | None = None
    eot_ids: tuple[int, ...] = ()
    fill_id: int | None = None
    shifted: bool = False
    native: str | None = None
    members: tuple[str, ...] = ()


LLADA = Family(
    name="llada",
    model_types=("llada",),
    mask_id=126336,
    eot_ids=(126081, 126348),
    fill_id=126081,
    native="llama",
    members=(
        "GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-1.5",
        "Zigeng/dParallel-LLaDA-8B-instruct",
    ),
)
DREAM = Family(
    name="dream",
    model_types=("Dream",),
    mask_id=151666,
    eot_ids=(151643, 151645),
    fill_id=151643,
    shifted=True,
    native="qwen2",
    members=(
        "Dream-org/Dream-v0-Instruct-7B", "Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-Coder-v0-Instruct-7B",
        "apple/DiffuCoder-7B-cpGRPO", "apple/DiffuCoder-7B-Instruct", "Zigeng/dParallel_Dream_7B_Instruct",
    ),
)
BIDIRECTIONAL = Family(
    # transformers' own Llama/Qwen2/... with is_causal=False and the mask id in the config:
    # the project's own models (ids come from the config and tokenizer).
    name="bidirectional",
    model_types=(),
)
MASKED_LM = Family(
    # any transformers *ForMaskedLM (BERT, RoBERTa, ModernBERT...): mask from the tokenizer.
    name="masked_lm",
    model_types=(),
)
# Block diffusion (dllm_strategies.blocks): models that decode block after block with an exact cache.
DIFFUSION_GEMMA = Family(
    # transformers' own DiffusionGemmaForBlockDiffusion: uniform-state diffusion, no mask token
    # (dllm_strategies.models.diffusion_gemma).
    name="diffusion_gemma",
    model_types=("diffusion_gemma",),
    native="diffusion_gemma",
    members=("google/diffusiongemma-26B-A4B-it",),
)
SDAR = Family(
    # masked block diffusion on Qwen3 with the block-causal mask (dllm_strategies.models.block_causal);
    # the mask token is the tokenizer's <|MASK|>.
    name="sdar",
    model_types=("sdar",),
    native="qwen3",
    members=("JetLM/SDAR-1.7B-Chat", "JetLM/SDAR-4B-Chat", "JetLM/SDAR-8B-Chat"),
)
FAST_DLLM_V2 = Family(
    # masked block diffusion on Qwen2.5, token-shifted logits (position i scores token i+1),
    # mask and stop ids of its generate() defaults.
    name="fast_dllm_v2",
    model_types=("Fast_dLLM_Qwen",),
    mask_id=151665,
    eot_ids=(151645, 151643),
    fill_id=151645,
    shifted=True,
    native="qwen2",
    members=("Efficient-Large-Model/Fast_dLLM_v2_7B", "Efficient-Large-Model/Fast_dLLM_v2_1.5B"),
)
BLOCK_FAMILIES: tuple[Family, ...] = (DIFFUSION_GEMMA, SDAR, FAST_DLLM_V2)
FAMILIES: tuple[Family, ...] = (LLADA, DREAM, BIDIRECTIONAL, MASKED_LM, *BLOCK_FAMILIES)

# Known diffusion LMs whose architecture is not supported natively yet.
UNSUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llada_moe": "LLaDA-MoE (mixture-of-experts blocks) has no native loader yet",
    "lladamoe": "LLaDA-MoE (mixture-of-experts blocks) has no native loader yet",
    "llada2_moe": "LLaDA 2.0 mixture-of-experts models have no native loader yet (transformers has no class for "
                  "their BailingMoeV2 layers); their block-diffusion decoding runs on any block-causal model "
                  "(docs/models.md)",
}


def family_for_model_type(model_type: str) -> Family | None:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None
