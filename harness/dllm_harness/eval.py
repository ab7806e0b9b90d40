"""``dllm-strategies eval`` / ``python -m dllm_harness.eval``: lm-eval with the ``dllm`` model.

    dllm-strategies eval --strategy "threshold(tau=0.9)" --tasks dllm_arith --limit 50
    dllm-strategies eval --model /path/to/LLaDA-8B-Instruct --tasks gsm8k --gen-length 256 --batch_size 8

The launcher imports the adapter (which registers the lm-eval model ``dllm``), renders the
project's local tasks (``dllm_arith``, ``dllm_arith_mc``, ``dllm_arith_long``) into a temporary
directory, and runs lm-eval's own command line (``lm_eval.__main__.cli_evaluate``) with
``--model dllm`` and ``--model_args`` built from its options.  Every lm-eval ``run`` option is accepted and handed to
lm-eval untouched, in the order given; a ``--model_args`` of the user's is merged over ours.

Defaults of the launcher that differ from lm-eval's: ``--batch_size 16``, ``--device`` CUDA when
available else CPU (lm-eval's is ``cuda:0``), and the chat template applied
(``--apply_chat_template``; the shipped model is a chat model; ``--no-chat-template`` turns it off).

On N processes (data parallel, each process a copy of the model and a share of the requests):
``torchrun --nproc_per_node N -m dllm_harness.eval ...`` (CPU or GPUs), or
``accelerate launch --multi_gpu --num_processes N -m dllm_harness.eval ...`` on GPUs; see
docs/evaluating.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dllm_strategies import discovery
from dllm_strategies.cli import device_name, positive_int, quiet_option, run_command
from dllm_strategies.errors import ConfigError, DllmError
from dllm_strategies.state import check_lengths
from dllm_strategies.strategy import Strategy

DEFAULT_BATCH_SIZE = 16
# lm-eval options the launcher sets itself: lm-eval's --model is always dllm (our --model names the
# checkpoint) and --tasks is read to map the local task names onto their rendered YAML files.
_OWN = {"model", "tasks", "help"}
# lm-eval options whose default the launcher changes: their help says what is used here.
_HELP = {
    "batch_size": f"prompts per decode batch (default: {DEFAULT_BATCH_SIZE}, the launcher's; lm-eval's 'auto' "
                  "is refused)",
    "device": "cpu, cuda, cuda:N (default: cuda when available, else cpu; lm-eval's own default is cuda:0)",
    "apply_chat_template": "apply the model's chat template, or the one named (default: applied by the launcher; "
                           "--no-chat-template turns it off)",
}


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
    ours.add_argument("--gen-length", "--gen_length", dest="gen_length", type=positive_int, default=None,
                      help="response positions decoded (default: each request's max_gen_toks, rounded up to a "
                           "multiple of the block length; 256 when none)")
    ours.add_argument("--block-length", "--block_length", dest="block_length", type=positive_int, default=None,
                      help="semi-autoregressive block width (default: the model's recommended one, else 32)")
    ours.add_argument("--steps", type=positive_int, default=None,
                      help="schedule steps (default: the gen length, one token per step)")
    ours.add_argument("--mc-num", "--mc_num", dest="mc_num", type=positive_int, default=None,
                      help="Monte Carlo draws per log-likelihood request (default: 128)")
    ours.add_argument("--dtype", default=None,
                      help="auto (default: bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16")
    ours.add_argument("--decode-seed", "--decode_seed", dest="decode_seed", type=int, default=None,
                      help="seed of every random choice of decoding and of the likelihood draws (default: 0)")
    ours.add_argument("--no-chat-template", "--no_chat_template", dest="chat_template", action="store_false",
                      help="do not pass --apply_chat_template to lm-eval (the launcher passes it by default)")
    quiet_option(ours)
    ours.add_argument("--tasks", "-t", nargs="+", required=True,
                      help="lm-eval task names, comma or space separated; dllm_arith, dllm_arith_mc and "
                           "dllm_arith_long are the project's local tasks")
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
                                 help=_HELP.get(action.dest, action.help),
                                 **({"type": device_name} if action.dest == "device" else {}))


def default_device() -> str:
    """CUDA when available, else CPU (lm-eval's own default is cuda:0 on every machine)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_args(args: argparse.Namespace) -> dict[str, Any]:
    values = {"pretrained": args.pretrained, "strategy": args.strategy, "gen_length": args.gen_length,
              "block_length": args.block_length, "steps": args.steps, "mc_num": args.mc_num, "dtype": args.dtype,
              "seed": args.decode_seed, "progress": False if getattr(args, "quiet", False) else None}
    return {k: v for k, v in values.items() if v is not None}


def check_model_name(name: str, lm_eval_models: Any) -> None:
    """``--model dllm`` (or ``hf``...) is an lm-eval habit: here ``--model`` is the checkpoint, and
    lm-eval's model is always ``dllm``.  Say so before anything loads, unless a model or a path of
    that name exists."""
    if name in lm_eval_models and name not in discovery.installed_models() and not Path(name).expanduser().exists():
        raise ConfigError(f"eval: --model {name!r} is an lm-eval model type, but here --model names the checkpoint "
                          "(a registered name such as 'default', a directory or a hub id) and lm-eval's model is "
                          "always dllm; leave --model out for the default model")


def quiet_git_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without git's ``fatal: not a git repository`` on stderr
    when the working directory is not in a repository (the same value: the hash, else what
    lm-eval reads from a ``.git`` folder, else None)."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


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
    import lm_eval.evaluator
    from dllm_harness.local_tasks import rendered_tasks
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.api.registry import MODEL_REGISTRY

    # what would fail inside lm-eval after minutes fails here first: the spec, the lengths, the model name
    Strategy.parse(args.strategy)
    if args.gen_length is not None:
        check_lengths(args.gen_length, args.block_length, args.steps)
    check_model_name(args.pretrained, MODEL_REGISTRY)
    with rendered_tasks() as local, _replaced(lm_eval.evaluator, "get_git_commit_hash", quiet_git_hash):
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
    return run_command(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
