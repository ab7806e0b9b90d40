"""The harness's registration plugin: the ``eval`` (lm-eval) and ``bench`` commands of
``dllm-strategies``.  Light to import: lm-eval, matplotlib and the runners load when a command runs
(building the ``eval`` parser reads lm-eval's own option list, a small module)."""

from __future__ import annotations

import argparse

import dllm_strategies
from dllm_strategies.errors import DllmError


def _eval(args: argparse.Namespace) -> int:
    from dllm_harness import eval as launcher

    return launcher.run(args)


def _bench(args: argparse.Namespace) -> int:
    from dllm_harness import bench

    return bench.command(args)


def _missing_eval_extra(reason: str):
    def fail(args: argparse.Namespace) -> int:
        raise DllmError(f"the eval command needs lm-eval: pip install 'dllm-strategies[eval]' ({reason})")

    return fail


@dllm_strategies.hookimpl
def dllm_commands(subparsers) -> None:
    from dllm_harness import eval as launcher

    e = subparsers.add_parser(
        "eval", help="evaluate a model and strategy with lm-evaluation-harness (model 'dllm')",
        description=launcher.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        launcher.add_arguments(e)
        e.set_defaults(func=_eval)
    except DllmError as exc:
        e.add_argument("rest", nargs=argparse.REMAINDER)
        e.set_defaults(func=_missing_eval_extra(str(exc)))

    from dllm_harness import bench

    b = subparsers.add_parser(
        "bench", help="benchmark strategy combinations side by side (accuracy, NFE, TPF, tokens/s, AUP, plots)",
        description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    b.set_defaults(func=_bench)
