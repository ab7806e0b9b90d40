"""``dllm-strategies eval`` / ``python -m dllm_harness.eval``: lm-eval with the ``dllm`` model.

    dllm-strategies eval --strategy "threshold(tau=0.9)" --tasks dllm_arith --limit 50
    dllm-strategies eval --model /path/to/LLaDA-8B-Instruct --tasks gsm8k --gen-length 256 --batch_size 8

The launcher imports the adapter (which registers the lm-eval model ``dllm``), renders the
project's local tasks (``dllm_arith``, ``dllm_arith_mc``) into a temporary directory, and runs
lm-eval's own command line (``lm_eval.__main__.cli_evaluate``) with ``--model dllm`` and
``--model_args`` built from its options.  Every lm-eval ``run`` option is accepted and handed to
lm-eval untouched, in the order given; a ``--model_args`` of the user's is merged over ours.

Defaults of the launcher that differ from lm-eval's: ``--batch_size 16``, ``--device`` CUDA when
available else CPU (lm-eval's is ``cuda:0``), and the chat template applied
(``--apply_chat_template``; the shipped model is a chat model; ``--no-chat-template`` turns it off).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dllm_strategies.errors import ConfigError, DllmError
from dllm_strategies.strategy import Strategy

DEFAULT_BATCH_SIZE = 16
# lm-eval options the launcher sets itself: lm-eval's --model is always dllm (our --model names the
# checkpoint) and --tasks is read to map the local task names onto their rendered YAML files.
_OWN = {"model", "tasks", "help"}


class _Passthrough(argparse.Action):
    """Records an lm-eval option exactly as typed, for lm-eval to parse."""

    def __call__(self, parser, namespace, values, option_string=None):
        raw = getattr(namespace, "lm_eval_argv", None) or []
        if values is None:
            values = []
        elif isinstance(values, str):
            values = [values]
        raw.extend([option_string, *values])
        namespace.lm_eval_argv = raw


def _lm_eval_run_parser() -> argparse.ArgumentParser:
    """lm-eval 0.4's own ``run`` parser (to copy its options from)."""
    from lm_eval._cli.run import Run

    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    Run.create(scratch)
    return scratch.choices["run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options plus every option of lm-eval's ``run`` (passed through)."""
    ours = parser.add_argument_group("dllm model (become --model_args of lm-eval's --model dllm)")
    ours.add_argument("--model", "--pretrained", dest="pretrained", default="default",
                      help="registered name, checkpoint directory or hub id (default: default)")
    ours.add_argument("--strategy", default=None,
                      help="strategy spec, e.g. 'threshold(tau=0.9)+eot' (default: the model's recommended one)")
    ours.add_argument("--gen-length", "--gen_length", dest="gen_length", type=int, default=None,
                      help="response positions decoded (default: each request's max_gen_toks, rounded up to a "
                           "multiple of the block length; 256 when none)")
    ours.add_argument("--block-length", "--block_length", dest="block_length", type=int, default=None,
                      help="semi-autoregressive block width (default: the model's recommended one, else 32)")
    ours.add_argument("--steps", type=int, default=None, help="schedule steps (default: gen length)")
    ours.add_argument("--mc-num", "--mc_num", dest="mc_num", type=int, default=None,
                      help="Monte Carlo draws per log-likelihood request (default 128)")
    ours.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16...")
    ours.add_argument("--decode-seed", "--decode_seed", dest="decode_seed", type=int, default=None,
                      help="seed of every random choice of decoding and of the likelihood draws (default 0)")
    ours.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                      help="do not pass --apply_chat_template to lm-eval (the launcher passes it by default)")
    ours.add_argument("--tasks", "-t", nargs="+", required=True,
                      help="lm-eval task names, comma or space separated; dllm_arith and dllm_arith_mc are the "
                           "project's local tasks")
    try:
        run_parser = _lm_eval_run_parser()
    except ImportError as exc:
        raise ConfigError(f"the eval command needs lm-eval: pip install 'dllm-strategies[eval]' ({exc})") from exc
    passthrough = parser.add_argument_group("lm-eval options (passed to lm-eval's run as given)")
    taken = set(parser._option_string_actions)
    for action in run_parser._actions:
        strings = [o for o in action.option_strings if o not in taken]  # ours win a clash
        if action.dest in _OWN or not strings:
            continue
        if action.nargs == 0:
            nargs: Any = 0
        elif action.nargs is None:
            nargs = None
        else:
            nargs = action.nargs
        passthrough.add_argument(*strings, dest=f"lm_eval__{action.dest}", nargs=nargs,
                                 action=_Passthrough, default=argparse.SUPPRESS, metavar=action.metavar,
                                 help=action.help)


def default_device() -> str:
    """CUDA when available, else CPU (lm-eval's own default is cuda:0 on every machine)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_args(args: argparse.Namespace) -> dict[str, Any]:
    values = {"pretrained": args.pretrained, "strategy": args.strategy, "gen_length": args.gen_length,
              "block_length": args.block_length, "steps": args.steps, "mc_num": args.mc_num, "dtype": args.dtype,
              "seed": args.decode_seed}
    return {k: v for k, v in values.items() if v is not None}


def lm_eval_argv(args: argparse.Namespace, task_files: dict[str, Any]) -> list[str]:
    """The argument list of lm-eval's ``run`` for these launcher arguments; local task names are
    replaced by their rendered YAML files."""
    tasks = [t for group in args.tasks for t in group.split(",") if t]
    if not tasks:
        raise ConfigError("eval: --tasks is empty; name at least one task (e.g. dllm_arith)")
    mapped = [str(task_files[t]) if t in task_files else t for t in tasks]
    argv = ["run", "--model", "dllm", "--model_args", json.dumps(_model_args(args)), "--tasks", *mapped,
            "--batch_size", str(DEFAULT_BATCH_SIZE), "--device", default_device()]
    if args.chat_template:
        argv.append("--apply_chat_template")
    return argv + list(getattr(args, "lm_eval_argv", None) or [])


def run(args: argparse.Namespace) -> int:
    """Run lm-eval's command line with the ``dllm`` model; lm-eval prints its results table."""
    import dllm_harness.lm_eval_model  # noqa: F401  (registers the lm-eval model "dllm")
    from dllm_harness.local_tasks import rendered_tasks
    from lm_eval.__main__ import cli_evaluate

    Strategy.parse(args.strategy)  # a bad spec fails before lm-eval starts
    with rendered_tasks() as local:
        argv = lm_eval_argv(args, local.files)
        saved = sys.argv
        sys.argv = ["lm-eval", *argv]
        try:
            cli_evaluate()
        except SystemExit as exc:  # lm-eval's own argument errors
            if exc.code not in (0, None):
                raise DllmError(f"lm-eval refused the arguments {' '.join(argv)!r} (exit {exc.code})") from exc
        finally:
            sys.argv = saved
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dllm_harness.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except DllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
