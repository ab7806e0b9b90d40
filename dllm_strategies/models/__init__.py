"""Model loading and the adapter strategies see."""

from dllm_strategies.models.adapter import DiffusionModel, DiffusionModelLike
from dllm_strategies.models.families import FAMILIES, Family
from dllm_strategies.models.loading import load_model

__all__ = ["FAMILIES", "DiffusionModel", "DiffusionModelLike", "Family", "load_model"]
