import os

import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer
from dllm_strategies.models.tiny import tiny_model

# Only this project's own plugins load in the suite, whatever else is installed.
os.environ.setdefault("DLLM_STRATEGIES_PLUGINS", "dllm-strategies")
# Nothing is ever downloaded in the suite.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def arith_tokenizer():
    """The synthetic task's word-level tokenizer, so tiny models read the task's prompts."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny(arith_tokenizer):
    """A random bidirectional Llama in float64 (exact comparisons), with the task tokenizer."""
    return tiny_model(hidden_size=32, num_layers=2, num_heads=2, dtype=torch.float64, seed=1, tokenizer=arith_tokenizer)


@pytest.fixture(scope="session")
def tiny32(arith_tokenizer):
    return tiny_model(hidden_size=32, num_layers=2, num_heads=2, seed=2, tokenizer=arith_tokenizer)


@pytest.fixture
def make_distribution(tmp_path, monkeypatch):
    """Install a throwaway distribution on sys.path: package files plus a dist-info with
    entry points in the ``dllm_strategies`` group.  It is found only through its entry points."""
    import importlib
    import sys
    import textwrap

    def make(name: str, files: dict[str, str], entry_points: dict[str, str], version: str = "0.1.0"):
        root = tmp_path / f"site-{name}"
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[dllm_strategies]\n{lines}\n")
        monkeypatch.syspath_prepend(str(root))
        allowed = os.environ.get("DLLM_STRATEGIES_PLUGINS", "dllm-strategies")
        monkeypatch.setenv("DLLM_STRATEGIES_PLUGINS", f"{allowed},{name}")
        importlib.invalidate_caches()
        return root

    yield make
