"""Layers point down: the core imports nothing from plugins/ or harness/ and hides no import of
itself inside a function; the harness uses plugins by name, never by importing their modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = frozenset(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file())
HARNESS_PACKAGES = frozenset(p.name for p in (ROOT / "harness").iterdir() if (p / "__init__.py").is_file())


def _imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def violations(path: str, source: str, *, above: frozenset[str], own: str | None) -> list[str]:
    """What ``source`` (a module at ``path``) does against the layering: an import of a package in
    ``above``, and (when ``own`` is given) an import of ``own`` inside a function."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        for name in _imports(node):
            if name.split(".")[0] in above:
                found.append(f"{path}:{node.lineno} imports {name} from a layer above")
    if own is not None:
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    for name in _imports(node):
                        if name.split(".")[0] == own:
                            found.append(f"{path}:{node.lineno} imports {name} inside {function.name}()")
    return found


def _tree(folder: str, *, above: frozenset[str], own: str | None) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        out += violations(str(path.relative_to(ROOT)), path.read_text(), above=above, own=own)
    return out


def test_the_core_imports_nothing_above_it_and_hides_no_import_in_a_function():
    assert PLUGIN_PACKAGES >= {"dllm_arith", "dllm_baselines", "dllm_learn2pd"} and "dllm_harness" in HARNESS_PACKAGES
    assert _tree("dllm_strategies", above=PLUGIN_PACKAGES | HARNESS_PACKAGES, own="dllm_strategies") == []


def test_plugins_never_import_the_harness():
    assert _tree("plugins", above=HARNESS_PACKAGES, own=None) == []


def test_the_harness_uses_plugins_by_name_never_by_module():
    assert _tree("harness", above=PLUGIN_PACKAGES, own=None) == []


@pytest.mark.parametrize("source, expected", [
    ("from dllm_arith import task\n", "imports dllm_arith from a layer above"),
    ("import dllm_harness.bench\n", "imports dllm_harness.bench from a layer above"),
    ("def f():\n    from dllm_strategies import decode\n", "imports dllm_strategies inside f()"),
])
def test_the_check_catches_each_kind_of_violation(source, expected):
    found = violations("dllm_strategies/x.py", source, above=PLUGIN_PACKAGES | HARNESS_PACKAGES,
                       own="dllm_strategies")
    assert len(found) == 1 and expected in found[0]
    # and a legitimate module passes
    assert violations("dllm_strategies/y.py", "import torch\nfrom dllm_strategies import ops\n",
                      above=PLUGIN_PACKAGES, own="dllm_strategies") == []
