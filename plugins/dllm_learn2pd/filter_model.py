"""The learned filter's network and its file format.

Learn2PD's filter is ``Linear(32, 32) -> ReLU -> Linear(32, 32)`` (2,112 parameters): the
block's 32 top-1 confidences in, one logit per position out (arXiv 2509.25188).  A filter is
saved as ``NAME.safetensors`` (the four tensors) beside ``NAME.json`` (width, hidden size,
accept threshold and how it was trained).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from dllm_strategies.errors import ModelError

FORMAT = "learn2pd-filter"
VERSION = 1
DEFAULT_THRESHOLD = 0.96
ASSETS = Path(__file__).parent / "assets"
DEFAULT_FILTER = ASSETS / "filter-default.safetensors"
TRAIN_HINT = ("train one with `dllm-strategies train-filter --model default --output "
              f"{DEFAULT_FILTER}` (or any --output, then learned_filter(path=...))")


class FilterMLP(nn.Module):
    """``Linear(width, hidden) -> ReLU -> Linear(hidden, width)``: confidences in, logits out."""

    def __init__(self, width: int = 32, hidden: int = 32):
        super().__init__()
        self.width, self.hidden = width, hidden
        self.inner = nn.Linear(width, hidden)
        self.outer = nn.Linear(hidden, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.relu(self.inner(features)))


@attrs.frozen
class FilterFile:
    """A loaded filter.

    Attributes:
        network: the :class:`FilterMLP` (float32, CPU, eval mode).
        threshold: accept a position when ``sigmoid(logit) > threshold``.
        metadata: the whole JSON sidecar (``training`` says how it was made).
        path: where it was read from.
    """

    network: FilterMLP = attrs.field(eq=False)
    threshold: float
    metadata: dict[str, Any] = attrs.field(eq=False)
    path: Path

    @property
    def width(self) -> int:
        return self.network.width


def metadata_path(path: Path) -> Path:
    """The JSON sidecar of a filter file."""
    return path.with_suffix(".json")


def save_filter(network: FilterMLP, path: str | Path, *, threshold: float = DEFAULT_THRESHOLD,
                training: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``path`` (``.safetensors``) and its JSON sidecar; returns both paths."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"a filter file must end in .safetensors, got {str(path)!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ModelError(f"the filter's threshold must lie in [0, 1], got {threshold}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in network.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, "width": network.width, "hidden": network.hidden,
            "parameters": sum(p.numel() for p in network.parameters()), "threshold": threshold,
            "training": training or {}}
    sidecar = metadata_path(path)
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return path, sidecar


def load_filter(path: str | Path | None = None) -> FilterFile:
    """Read a filter written by :func:`save_filter` (default: the shipped one)."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_FILTER
    if not path.is_file():
        where = "the shipped default filter" if path == DEFAULT_FILTER else "the filter"
        raise ModelError(f"{where} {str(path)!r} does not exist; {TRAIN_HINT}")
    sidecar = metadata_path(path)
    if not sidecar.is_file():
        raise ModelError(f"filter {str(path)!r} has no metadata file {str(sidecar)!r} (width, threshold); "
                         "save filters with dllm_learn2pd.filter_model.save_filter or `dllm-strategies train-filter`")
    try:
        meta = json.loads(sidecar.read_text())
        width, hidden, threshold = int(meta["width"]), int(meta["hidden"]), float(meta["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"filter metadata {str(sidecar)!r} is unreadable ({type(exc).__name__}: {exc}); it needs "
                         "'width', 'hidden' and 'threshold'") from exc
    if meta.get("format") != FORMAT:
        raise ModelError(f"{str(sidecar)!r} is not a Learn2PD filter (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if width < 1 or hidden < 1 or not 0.0 <= threshold <= 1.0:
        raise ModelError(f"filter metadata {str(sidecar)!r} has width {width}, hidden {hidden}, threshold "
                         f"{threshold}; expected positive sizes and a threshold in [0, 1]")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read filter {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    network = FilterMLP(width, hidden)
    expected = {name: tuple(value.shape) for name, value in network.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in tensors.items()}
    if found != expected:
        raise ModelError(f"filter {str(path)!r} holds tensors {found}, but width {width} and hidden {hidden} "
                         f"(from {sidecar.name}) need {expected}")
    network.load_state_dict(tensors)
    network.eval().requires_grad_(False)
    return FilterFile(network=network, threshold=threshold, metadata=meta, path=path)
