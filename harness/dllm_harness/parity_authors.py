"""Run the authors' own decoders for ``python -m dllm_harness.parity`` (docs/parity.md).

Run it by path with the Python of an environment where the authors' code runs (it needs
transformers 4.x, which this project does not use); it imports nothing of this project, only
torch and the authors' files from the directories given::

    python harness/dllm_harness/parity_authors.py --dir /tmp/parity --llada ~/src/LLaDA \\
        --fast-dllm ~/src/Fast-dLLM --dparallel ~/src/dParallel --gen-lengths 64 256

``--llada``: a checkout of ML-GSAI/LLaDA (its ``generate.py``); ``--fast-dllm``: NVlabs/Fast-dLLM
(``llada/generate.py`` and ``llada/model``, ``dream/model``); ``--dparallel``: its authors'
repository (``LLaDA/generate.py`` and ``LLaDA/model``); ``--dream``: a directory holding Dream's
modelling code as a package ``model`` (``modeling_dream.py``, ``generation_utils.py``), by
default Fast-dLLM's ``dream`` folder, whose ``diffusion_generate`` is Dream's plus a threshold
mode that is not used here.  LLaDA's own repository ships no modelling code (it is on the
model hub); its ``generate`` runs on Fast-dLLM's ``LLaDAModelLM``, LLaDA's class with KV-cache
support added.  Every prompt is decoded alone (batch 1, as Fast-dLLM's functions require),
greedy; the tokens and the summed wall time per case go to ``<dir>/authors.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

BLOCK_NAME = "block_length"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_model_package(root: Path):
    """Make ``root/model`` the importable package ``model`` (each repository has its own)."""
    for name in [n for n in sys.modules if n == "model" or n.startswith("model.")]:
        del sys.modules[name]
    while str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    import model  # noqa: F401  (the authors' package named model, under root)

    return sys.modules["model"]


def _tokens(output) -> tuple[torch.Tensor, int | None]:
    """The sequences and, when the function returns one (Fast-dLLM's, dParallel's), its NFE."""
    if isinstance(output, tuple):
        return output[0], int(output[1])
    return getattr(output, "sequences", output), None


def llada_cases(args, mask_id: int, block: int) -> dict:
    """Fast-dLLM's LLaDAModelLM on the LLaDA-layout export; each function on each prompt."""
    cases = {}
    fast = Path(args.fast_dllm) / "llada"
    package = _with_model_package(fast)
    model = package.LLaDAModelLM.from_pretrained(str(Path(args.dir) / "llada"), torch_dtype=torch.float32).eval()
    fast_generate = _load(fast / "generate.py", "fast_dllm_generate")
    if args.llada:
        llada = _load(Path(args.llada) / "generate.py", "llada_generate")
        cases["llada.generate"] = lambda p, g: llada.generate(
            model, p, steps=g, gen_length=g, block_length=block, temperature=0.0, remasking="low_confidence",
            mask_id=mask_id)
    cases["fast_dllm.generate(threshold=0.9)"] = lambda p, g: fast_generate.generate(
        model, p, steps=g, gen_length=g, block_length=block, temperature=0.0, mask_id=mask_id, threshold=0.9)
    prefix = fast_generate.generate_with_prefix_cache
    cases["fast_dllm.generate_with_prefix_cache(threshold=0.9)"] = lambda p, g: prefix(
        model, p, steps=g, gen_length=g, block_length=block, temperature=0.0, mask_id=mask_id, threshold=0.9)
    cases["fast_dllm.generate_with_dual_cache(threshold=0.9)"] = lambda p, g: fast_generate.generate_with_dual_cache(
        model, p, steps=g, gen_length=g, block_length=block, temperature=0.0, mask_id=mask_id, threshold=0.9)
    return cases


def dparallel_cases(args, mask_id: int, block: int) -> dict:
    root = Path(args.dparallel) / "LLaDA"
    package = _with_model_package(root)
    model = package.LLaDAModelLM.from_pretrained(str(Path(args.dir) / "llada"), torch_dtype=torch.float32).eval()
    generate = _load(root / "generate.py", "dparallel_generate")
    return {"dparallel.generate(threshold=0.5)": lambda p, g: generate.generate(
        model, p, steps=g, gen_length=g, block_length=block, temperature=0.0, mask_id=mask_id, threshold=0.5)}


def dream_cases(args, mask_id: int) -> dict:
    root = Path(args.dream) if args.dream else Path(args.fast_dllm) / "dream"
    package = _with_model_package(root)
    model = package.DreamModel.from_pretrained(str(Path(args.dir) / "dream"), torch_dtype=torch.float32).eval()

    def case(alg):
        return lambda p, g: model.diffusion_generate(p, max_new_tokens=g, steps=g, alg=alg, temperature=0.0,
                                                     mask_token_id=mask_id, output_history=False,
                                                     return_dict_in_generate=False)

    return {f"dream.diffusion_generate(alg={alg})": case(alg) for alg in ("maskgit_plus", "topk_margin", "entropy")}


def run(cases: dict, prompts: list[list[int]], gen_lengths: list[int], results: dict, only: str | None) -> None:
    for name, call in cases.items():
        if only and only not in name:
            continue
        for gen_length in gen_lengths:
            rows, nfe, seconds = [], [], 0.0
            for ids in prompts:
                prompt = torch.tensor([ids])
                started = time.perf_counter()
                with torch.no_grad():
                    out, forwards = _tokens(call(prompt, gen_length))
                seconds += time.perf_counter() - started
                rows.append(out[0, prompt.shape[1]:].tolist())
                nfe.append(forwards)
            results[f"{name}@{gen_length}"] = {"tokens": rows, "nfe": nfe, "seconds": seconds}
            print(f"{name} gen {gen_length}: {len(rows)} prompts in {seconds:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="the directory `parity prepare` wrote")
    parser.add_argument("--llada", help="a checkout of LLaDA's repository (generate.py)")
    parser.add_argument("--fast-dllm", required=True, help="a checkout of Fast-dLLM's repository")
    parser.add_argument("--dparallel", help="a checkout of dParallel's repository")
    parser.add_argument("--dream", help="a directory with Dream's modelling code as package `model` "
                                        "(default: Fast-dLLM's dream folder)")
    parser.add_argument("--gen-lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (use the same for `compare`)")
    parser.add_argument("--cases", help="only the cases whose name contains this text")
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = json.loads((Path(args.dir) / "prompts.json").read_text())
    mask_id, block, prompts = setup["mask_id"], setup[BLOCK_NAME], setup["prompts"]
    prompts = prompts[:args.limit] if args.limit else prompts
    target = Path(args.dir) / "authors.json"
    results: dict = json.loads(target.read_text()) if target.is_file() else {}  # other cases' runs are kept
    families = [lambda: llada_cases(args, mask_id, block), lambda: dream_cases(args, mask_id)]
    if args.dparallel:
        families.insert(1, lambda: dparallel_cases(args, mask_id, block))
    for cases in families:
        run(cases(), prompts, args.gen_lengths, results, args.cases)
        target.write_text(json.dumps(results))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
