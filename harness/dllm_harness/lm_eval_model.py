"""The lm-evaluation-harness model ``dllm``: any diffusion LM with any strategy spec.

Importing this module registers the model with lm-eval (``@register_model("dllm")``); lm-eval
scans no entry points for models, so the ``dllm-strategies eval`` launcher imports it first.
lm-eval's own models stay available: their lazy registrations are made before ours (lm-eval
fills its registry only when it is empty).

    dllm-strategies eval --model default --strategy "threshold(tau=0.9)" --tasks dllm_arith
    # or, in Python: simple_evaluate(model=DllmLM(pretrained="default", strategy="threshold(tau=0.9)"), ...)
    # (pass model_args as a dict there: lm-eval splits a model_args string at every comma)

``model_args``:

* ``pretrained``: a registered name (``default``), a checkpoint directory or a hub id, loaded with
  :func:`dllm_strategies.load_model`; or an already loaded model object (Python API).
* ``strategy``: a spec such as ``threshold(tau=0.9)+eot`` (default: the model's recommended one).
* ``gen_length``, ``block_length``, ``steps``: as in :func:`dllm_strategies.decode`.
  ``gen_length`` unset: each request's ``max_gen_toks`` rounded up to a multiple of the block
  length (256 when the request gives none).  ``gen_length`` set: it is decoded as given; a request
  whose ``max_gen_toks`` is smaller gets its answer cut at ``max_gen_toks`` tokens, one whose
  ``max_gen_toks`` is larger may be cut by ``gen_length``: both are logged once, and the requests
  whose response filled ``gen_length`` without an end-of-text are counted (``hit_length``).
* ``batch_size``: prompts per decode batch (an integer; lm-eval's ``auto`` is refused and
  ``max_batch_size`` ignored).  ``device``, ``dtype``, ``seed`` (of every random choice of
  decoding and of the likelihood draws), ``trust_remote_code``.
* ``mc_num`` (128): Monte Carlo draws per likelihood request; ``mc_batch_size`` (64): draw rows per
  forward; ``greedy_check`` (true): compute ``is_greedy`` by decoding (see ``loglikelihood``).
* ``progress`` (true): progress bars on stderr (process 0 only, and only when stderr is a
  terminal): decoded response positions for ``generate_until``, Monte Carlo rows for the
  likelihoods; the launcher's ``--quiet`` sets it false.

Data parallel: under ``accelerate launch --num_processes N`` or ``torchrun --nproc_per_node N``
(``WORLD_SIZE`` > 1) the model makes an ``accelerate.Accelerator`` (on CPU when CUDA is absent or
``device=cpu``), takes its device, rank (``process_index``) and world size, and lets lm-eval split
the requests across processes, as lm-eval's HF model does.  ``accelerate launch --num_processes N``
without GPUs runs one process only (accelerate falls back to its single-process launcher): the
model then warns that N processes were asked for and one runs (use torchrun on CPU).

Costs (steps, NFE split into answer and tail forwards, answer tokens, wall time; TPF, answer TPF
and tokens/s as :mod:`dllm_harness.metrics` defines them) are recorded per request in
:attr:`DllmLM.costs`, gathered from every process, and reported in the results under
``config.dllm.costs`` (lm-eval adds :meth:`DllmLM.get_model_info`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import lm_eval.models  # noqa: F401  (lazy registrations of lm-eval's own models, before ours)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from dllm_strategies import decode, discovery, encode_prompts, ops
from dllm_strategies.errors import ConfigError
from dllm_strategies.progress import DecodeProgress
from dllm_strategies.spec import format_spec, parse_spec
from dllm_strategies.strategy import Strategy
from dllm_harness import likelihood, metrics

log = logging.getLogger("dllm_harness")

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a request names none
_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature"}


def _as_int(name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"dllm: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"dllm: {name} must be true or false, got {value!r}")


def single_process_fallback() -> bool:
    """True when ``accelerate launch`` asked for several processes and runs one: its single-process
    launcher (what it falls back to without GPUs) sets ``ACCELERATE_USE_CPU``, and sets
    ``MASTER_ADDR`` only when more than one process (or machine) was asked for, but no
    ``WORLD_SIZE``."""
    return "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ


@register_model("dllm")
class DllmLM(LM):
    """lm-eval model over :func:`dllm_strategies.decode` (see the module docstring for ``model_args``)."""

    def __init__(self, pretrained: Any = "default", strategy: str | None = None, gen_length: int | None = None,
                 block_length: int | None = None, steps: int | None = None, batch_size: int | str = 16,
                 max_batch_size: int | None = None, device: str | None = None, dtype: str = "auto", seed: int = 0,
                 mc_num: int = 128, mc_batch_size: int = 64, greedy_check: bool = True,
                 trust_remote_code: bool = False, progress: bool = True, **unknown: Any):
        super().__init__()
        if unknown:
            known = ("pretrained, strategy, gen_length, block_length, steps, batch_size, device, dtype, seed, "
                     "mc_num, mc_batch_size, greedy_check, trust_remote_code, progress")
            raise ConfigError(f"dllm model_args: unknown argument(s) {', '.join(sorted(unknown))}; known: {known}")
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            raise ConfigError("dllm: batch_size='auto' is not supported; pass an integer (prompts per decode batch)")
        self.batch_size = _as_int("batch_size", batch_size)
        self.gen_length = _as_int("gen_length", gen_length, optional=True)
        self.steps = _as_int("steps", steps, optional=True)
        self.seed = _as_int("seed", seed, minimum=0)
        self.mc_num = _as_int("mc_num", mc_num)
        self.mc_batch_size = _as_int("mc_batch_size", mc_batch_size)
        self.greedy_check = _as_bool("greedy_check", greedy_check)
        self.progress = _as_bool("progress", progress)
        self.accelerator = None
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1 and single_process_fallback():
            log.warning("dllm: 'accelerate launch' asked for several processes but this is the only one: without "
                        "GPUs accelerate runs a single process; on CPU use torchrun --nproc_per_node N "
                        "(docs/evaluating.md)")
        if world > 1:
            from accelerate import Accelerator
            from accelerate.utils import InitProcessGroupKwargs

            on_cpu = str(device or "").startswith("cpu") or not torch.cuda.is_available()
            self.accelerator = Accelerator(cpu=on_cpu,
                                           kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
            if self.accelerator.num_processes != world:
                raise ConfigError(f"dllm: WORLD_SIZE is {world} but accelerate sees {self.accelerator.num_processes} "
                                  "process(es); launch with 'accelerate launch' or torchrun")
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            device = str(self.accelerator.device)
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"dllm: device {device!r} was asked for but CUDA is not available; pass --device cpu")
        decoding = discovery.recommended_decoding(pretrained if isinstance(pretrained, str) else None,
                                                  strategy=strategy,
                                                  block_length=None if block_length is None else
                                                  _as_int("block_length", block_length))
        self.strategy = decoding.strategy
        Strategy.parse(self.strategy)  # a bad spec fails here, before the model loads
        if isinstance(pretrained, str):
            from dllm_strategies import load_model

            self.model = load_model(pretrained, device=device, dtype=dtype,
                                    trust_remote_code=_as_bool("trust_remote_code", trust_remote_code))
            self.pretrained = pretrained
        else:
            self.model = pretrained
            self.pretrained = getattr(pretrained, "name", "") or type(pretrained).__name__
        # a block-diffusion model's own strategy and block where neither the user nor a registration chose
        # (a model's own block is never capped at the generation length: it is its canvas or attention block)
        own = discovery.loaded_decoding(decoding, self.model, strategy=strategy,
                                        block_length=None if block_length is None else decoding.block_length)
        self._block_given = block_length is not None or own.block_length != decoding.block_length
        self.strategy = own.strategy
        self.block_length = own.block_length
        self._device = self.model.device
        self.dtype = dtype
        self.costs: list[metrics.RequestCost] = []
        self._templated = False
        self._warned: set[str] = set()

    # ---- lm-eval plumbing ------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(f"dllm: model {self.pretrained!r} has no tokenizer; lm-eval requests are text")
        return tokenizer

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or self.pretrained).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            name = chat_template if isinstance(chat_template, str) else "default"
            return template.get(name)
        return template or None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"dllm: model {self.pretrained!r} has no chat template; run without "
                              "--apply_chat_template")
        self._templated = True  # the template writes the special tokens itself
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.world_size <= 1:
            return [obj]
        out = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def get_model_info(self) -> dict[str, Any]:
        """Settings and cost totals; lm-eval adds them to ``results["config"]``."""
        return {"dllm": {
            "pretrained": self.pretrained, "strategy": self.strategy or "default (LLaDA low-confidence)",
            "gen_length": self.gen_length, "block_length": self.block_length, "steps": self.steps,
            "batch_size": self.batch_size, "seed": self.seed, "mc_num": self.mc_num, "dtype": str(self.dtype),
            "device": str(self._device), "world_size": self.world_size, "costs": metrics.summarize(self.costs),
        }}

    # ---- helpers -----------------------------------------------------------------------------
    def _bars_disabled(self, disable_tqdm: bool) -> bool | None:
        """tqdm's ``disable``: off when asked or not on process 0, else on only when stderr is a terminal."""
        return True if disable_tqdm or not self.progress or self.rank != 0 else None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes: the tokenizer's BOS, else end-of-text."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else int(self.model.fill_id)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self._templated)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, split as the whole text tokenises (trailing spaces of the
        context belong to the continuation)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix_token_id], self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        whole = self._encode(context + continuation)
        context_ids = self._encode(context)
        return whole[:len(context_ids)], whole[len(context_ids):]

    def _warn_unknown(self, contexts: Sequence[Sequence[int]]) -> None:
        """Once per run: requests whose words are not in the tokenizer's vocabulary (the model reads
        the unknown token, and a model that never saw it often answers nothing)."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        hit = 0 if unk is None else sum(unk in ids for ids in contexts)
        if hit:
            self._warn_once("unknown", f"dllm: {hit} of {len(contexts)} requests hold words that are not in the "
                                       f"tokenizer's vocabulary; the model reads them as {self.tokenizer.unk_token!r}")

    def _counted(self, requests: Sequence[Any]) -> list[bool]:
        """Which requests count in the costs: lm-eval pads a process's list with copies of its last
        request under data parallel; only ``repeats`` copies of a request are real."""
        seen: Counter = Counter()
        out = []
        for request in requests:
            key = (request.task_name, request.doc_id, request.idx)
            seen[key] += 1
            out.append(seen[key] <= (request.repeats or 1))
        return out

    def _record(self, kind: str, costs: list[metrics.RequestCost]) -> None:
        """Keep this call's costs (from every process) and log their totals."""
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, [c.to_dict() for c in costs])
            costs = [metrics.RequestCost(**c) for part in gathered for c in part]
        self.costs.extend(costs)
        if self.rank == 0 and costs:
            totals = metrics.CostTotals.of(costs)
            line = f"dllm {kind}: {totals.requests} requests, mean NFE {totals.mean_nfe:.1f}, {totals.seconds:.1f} s"
            if kind == "generate_until":
                line += (f", mean steps {totals.mean_steps:.1f}, mean answer / tail forwards "
                         f"{totals.mean_answer_forwards:.1f} / {totals.mean_tail_forwards:.1f}, TPF {totals.tpf:.2f}, "
                         f"answer TPF {totals.answer_tpf:.2f}, {totals.tokens_per_second:.1f} tokens/s, "
                         f"{totals.hit_length} reached gen_length")
                if totals.encoder_forwards:
                    line += f", mean encoder passes {totals.mean_encoder_forwards:.1f} (not in NFE)"
            print(line, file=sys.stderr)

    def _spec_for(self, gen_kwargs: dict[str, Any]) -> str:
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        if not gen_kwargs.get("do_sample") or temperature <= 0:
            return self.strategy
        items = parse_spec(self.strategy)
        if any(item.name == "gumbel" for item in items):
            self._warn_once("gumbel", "dllm: the strategy already samples (gumbel); the request's temperature is "
                                      "ignored")
            return self.strategy
        return format_spec([*items, *parse_spec(f"gumbel(temperature={temperature})")])

    def _gen_length_for(self, max_gen_toks: int | None) -> int:
        if self.gen_length is not None:
            if max_gen_toks is not None and max_gen_toks < self.gen_length:
                self._warn_once("short", f"dllm: requests ask for max_gen_toks={max_gen_toks} < gen_length="
                                         f"{self.gen_length}; decoding {self.gen_length} positions and cutting "
                                         f"answers at {max_gen_toks} tokens")
            elif max_gen_toks is not None and max_gen_toks > self.gen_length:
                self._warn_once("long", f"dllm: requests allow max_gen_toks={max_gen_toks} > gen_length="
                                        f"{self.gen_length}; answers end at {self.gen_length} tokens (requests that "
                                        "reach it are counted as hit_length in the costs)")
            return self.gen_length
        wanted = max_gen_toks or DEFAULT_MAX_GEN_TOKS
        return -(-wanted // self.block_length) * self.block_length

    def _block_for(self, gen_length: int) -> int:
        """The block length: as given, else the default capped at the gen length."""
        return self.block_length if self._block_given else min(self.block_length, gen_length)

    # ---- generation -------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Decode every request with the strategy; cut each answer at its ``until`` strings and
        ``max_gen_toks``.  Requests with equal settings are batched, longest prompts first."""
        groups: dict[tuple, list[int]] = {}
        contexts: list[list[int]] = []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            ignored = set(gen_kwargs) - _GEN_KWARGS
            if ignored:
                self._warn_once("kwargs", f"dllm: generation arguments {sorted(ignored)} are ignored")
            until = gen_kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            max_toks = gen_kwargs.get("max_gen_toks")
            max_toks = _as_int("max_gen_toks", max_toks, optional=True)
            contexts.append(self._encode(context) if context else [self.prefix_token_id])
            key = (self._spec_for(gen_kwargs), until, max_toks)
            groups.setdefault(key, []).append(i)
        self._warn_unknown(contexts)
        outputs: list[str] = [""] * len(requests)
        counted = self._counted(requests)
        costs: list[metrics.RequestCost] = []
        # the bar counts decoded response positions (the decode loop's observer feeds it every step)
        total = sum(len(v) * self._gen_length_for(k[2]) for k, v in groups.items())
        bar = DecodeProgress(total=total, desc="dllm generate_until", disable=self._bars_disabled(disable_tqdm))
        stop_ids = (*self.model.eot_ids, self.model.fill_id)
        for (spec, until, max_toks), members in groups.items():
            gen_length = self._gen_length_for(max_toks)
            members = sorted(members, key=lambda i: -len(contexts[i]))
            strategy = bar.track(spec)
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                ids, mask = encode_prompts(self.model, [contexts[i] for i in batch], pad_id=self.model.fill_id)
                with torch.inference_mode():
                    result = decode(self.model, ids, prompt_mask=mask, strategy=strategy, gen_length=gen_length,
                                    block_length=self._block_for(gen_length), steps=self.steps, seed=self.seed)
                ends = ops.first_index_of(result.tokens, stop_ids)
                if max_toks is not None:
                    ends = ends.clamp(max=max_toks)
                rows = result.tokens.tolist()
                texts = self.tokenizer.batch_decode([r[:e] for r, e in zip(rows, ends.tolist(), strict=True)],
                                                    skip_special_tokens=True)
                answers = metrics.answer_lengths(result.tokens, stop_ids, tokenizer=self.tokenizer, stops=until,
                                                 max_tokens=max_toks)
                answer_fw, tail_fw = metrics.split_forwards(result.block_nfe, answers, gen_length)
                hit = ~torch.isin(result.tokens, torch.tensor(stop_ids, device=result.tokens.device)).any(1)
                share = result.wall_time / len(batch)
                for row, i in enumerate(batch):
                    outputs[i] = metrics.cut_at_stops(texts[row], until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
                    if counted[i]:
                        costs.append(metrics.RequestCost(
                            kind="generate_until", task=str(requests[i].task_name), doc_id=int(requests[i].doc_id or 0),
                            nfe=int(result.nfe[row]), steps=int(result.steps[row]), answer_tokens=int(answers[row]),
                            seconds=share, gen_length=gen_length, hit_length=bool(hit[row]),
                            answer_forwards=int(answer_fw[row]), tail_forwards=int(tail_fw[row]),
                            encoder_forwards=int(result.encoder_forwards)))
        bar.finish_run()
        bar.close()
        self._record("generate_until", costs)
        return outputs

    # ---- likelihood -------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """LLaDA's Monte Carlo estimate (:mod:`dllm_harness.likelihood`), ``mc_num`` draws per request.

        ``is_greedy``: the continuation of ``L`` tokens equals what LLaDA's greedy low-confidence
        decoding (one token per step, one block of ``L``) writes after the context.  With
        ``greedy_check=false`` it is not computed and reported False.
        """
        pairs = [self._encode_pair(*request.args) for request in requests]
        return self._score(requests, pairs, "loglikelihood", disable_tqdm, greedy=self.greedy_check)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The same estimate for the whole text after a prefix token (BOS, else end-of-text); texts
        longer than the model's positions are an error, not split into windows."""
        pairs = [([self.prefix_token_id], self.tokenizer(request.args[0], add_special_tokens=False)["input_ids"])
                 for request in requests]
        return [ll for ll, _ in self._score(requests, pairs, "loglikelihood_rolling", disable_tqdm, greedy=False)]

    def _score(self, requests: list[Any], pairs: list[tuple[list[int], list[int]]], kind: str, disable_tqdm: bool,
               greedy: bool) -> list[tuple[float, bool]]:
        if not requests:
            return []
        if getattr(self.model, "process", "absorbing") != "absorbing":
            raise ConfigError(f"dllm: {kind} is LLaDA's Monte Carlo estimate over masked positions, but model "
                              f"{self.pretrained!r} is a uniform-state diffusion model (no mask token); run "
                              "generate_until tasks with it")
        contexts, targets = [p[0] for p in pairs], [p[1] for p in pairs]
        likelihood.check_requests(self.model, contexts, targets)
        counted = self._counted(requests)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        nfe = torch.zeros(len(requests), dtype=torch.long)
        seconds = torch.zeros(len(requests), dtype=torch.float64)
        bar = tqdm(total=len(requests) * self.mc_num, desc=f"dllm {kind}", disable=self._bars_disabled(disable_tqdm),
                   file=sys.stderr)
        # Longest first, so that the rows sharing a forward have similar lengths (little padding).
        order = sorted(range(len(requests)), key=lambda i: -(len(contexts[i]) + len(targets[i])))
        began = time.perf_counter()
        ll, _ = likelihood.masked_loglikelihood(
            self.model, [contexts[i] for i in order], [targets[i] for i in order], mc_num=self.mc_num,
            seed=self.seed, rows_per_forward=self.mc_batch_size, progress=bar.update)
        share = (time.perf_counter() - began) / len(requests)  # every request has mc_num equal rows
        for row, i in enumerate(order):
            out[i] = (float(ll[row]), False)
        nfe += self.mc_num
        seconds += share
        bar.close()
        if greedy:
            flags, greedy_nfe, greedy_seconds = self._greedy(contexts, targets)
            out = [(ll, bool(flag)) for (ll, _), flag in zip(out, flags.tolist(), strict=True)]
            nfe += greedy_nfe
            seconds += greedy_seconds
        for i, request in enumerate(requests):
            self.cache_hook.add_partial(kind, request.args, out[i] if kind == "loglikelihood" else out[i][0])
        costs = [metrics.RequestCost(kind=kind, task=str(r.task_name), doc_id=int(r.doc_id or 0), nfe=int(nfe[i]),
                                     steps=0, answer_tokens=0, seconds=float(seconds[i]))
                 for i, r in enumerate(requests) if counted[i]]
        self._record(kind, costs)
        return out

    def _greedy(self, contexts: list[list[int]], targets: list[list[int]]):
        """(N,) whether greedy decoding reproduces each target, with its NFE and seconds per request."""
        flags = torch.zeros(len(targets), dtype=torch.bool)
        nfe = torch.zeros(len(targets), dtype=torch.long)
        seconds = torch.zeros(len(targets), dtype=torch.float64)
        by_length: dict[int, list[int]] = {}
        for i, target in enumerate(targets):
            by_length.setdefault(len(target), []).append(i)
        for length, members in sorted(by_length.items()):
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                ids, mask = encode_prompts(self.model, [contexts[i] for i in batch], pad_id=self.model.fill_id)
                with torch.inference_mode():
                    result = decode(self.model, ids, prompt_mask=mask, strategy=None, gen_length=length,
                                    block_length=length, steps=length, seed=self.seed)
                want = torch.tensor([targets[i] for i in batch], device=result.tokens.device)
                index = torch.tensor(batch)
                flags[index] = (result.tokens == want).all(1).cpu()
                nfe[index] = result.nfe.cpu()
                seconds[index] = result.wall_time / len(batch)
        return flags, nfe, seconds
