"""Docs cannot drift from the hook contracts."""

import inspect
from pathlib import Path

from dllm_strategies import hookspecs
from dllm_strategies.strategy import hook_names

DOCS = Path(__file__).parent.parent / "docs"


def test_every_hook_signature_is_documented():
    text = (DOCS / "hooks.md").read_text()
    for name in hook_names():
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"## {name}({args})" in text, f"docs/hooks.md lacks '## {name}({args})'"


def test_every_hook_states_its_call_semantics():
    for name in hook_names():
        spec = getattr(hookspecs, name)
        opts = spec.dllm_strategies_spec
        doc = spec.__doc__ or ""
        if opts.get("firstresult"):
            assert "Stops at first non-None result" in doc, name
        else:
            assert "collect-all" in doc or "Register" in doc or "Add subcommands" in doc, name


def _code_block_after(text: str, marker: str) -> str:
    start = text.index(marker)
    start = text.index("```python\n", start) + len("```python\n")
    return text[start:text.index("```", start)]


def test_writing_a_plugin_example_runs(make_distribution):
    from dllm_strategies import decode
    from dllm_strategies.testing import FakeModel, ScriptedLogits

    source = _code_block_after((DOCS / "writing-a-plugin.md").read_text(), "`my_cosine/dllm_cosine.py`")
    make_distribution("dllm-cosine", {"dllm_cosine.py": source}, {"cosine": "dllm_cosine:Cosine"})
    model = FakeModel(logits_fn=ScriptedLogits(40), vocab_size=40)
    result = decode(model, [[5, 6]], strategy="cosine+margin", gen_length=16, block_length=8, steps=8)
    assert not (result.tokens == model.mask_id).any()
    first_block = result.tokens_per_step[0][:4]
    assert sum(first_block) == 8 and first_block[0] <= first_block[-1]
