"""What a benchmark runs: a matrix of strategy combinations, and sweeps of a method's main knob.

An entry is one combination: strategy spec, model, gen length, block length, steps.  Entries
without a gen length run at every gen length of the run.  A sweep ``SPEC@KNOB=V1,V2,...`` expands
into one entry per value; ``KNOB`` is ``steps``, ``tokens_per_step`` (steps = gen length / k) or
``plugin.option`` (e.g. ``threshold.tau``).  Every run adds the baseline it measures speedups
against: LLaDA low-confidence decoding at one token per step, per (model, gen length).

A matrix file is JSON or YAML: a list of entries (or ``{"entries": [...]}``), each a mapping with
``spec`` and optionally ``model``, ``gen_length``, ``block_length``, ``steps``, ``tokens_per_step``,
``label``, ``method`` and ``sweep: {knob: ..., values: [...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from dllm_strategies import discovery
from dllm_strategies.errors import ConfigError, DllmError, SpecError
from dllm_strategies.strategy import Strategy
from dllm_strategies.spec import SpecItem, format_spec, parse_spec

BASELINE_METHOD = "low_confidence"
DEFAULT_GEN_LENGTHS = (64, 256)
DEFAULT_BLOCK_LENGTH = discovery.DEFAULT_BLOCK_LENGTH

# The default matrix: the baseline's own parallel variants, the two confidence rules, and the
# compositions that the papers pair them with (kept only when their plugins are installed).
DEFAULT_MATRIX: tuple[dict[str, Any], ...] = (
    {"spec": "", "tokens_per_step": 2},
    {"spec": "", "tokens_per_step": 4},
    {"spec": "threshold(tau=0.9)"},
    {"spec": "entropy_threshold(tau=0.5)"},
    {"spec": "threshold(tau=0.9)+eot"},
    {"spec": "threshold(tau=0.9)+dual_cache"},
)

# The default sweeps: each first-party parallel rule over its main knob (kept when installed).
# Prophet watches the answer after the shipped task's own marker (docs/second-wave.md).
DEFAULT_SWEEPS: tuple[str, ...] = (
    "@tokens_per_step=1,2,4,8",
    "threshold@threshold.tau=0.7,0.8,0.9,0.95",
    "entropy_threshold@entropy_threshold.tau=0.25,0.5,1.0,2.0",
    "learned_filter@learned_filter.threshold=0.8,0.9,0.96,0.99",
    "eb_sampler@eb_sampler.gamma=0.001,0.01,0.1,1.0",
    "wino@wino.draft=0.5,0.6,0.7,0.8",
    'prophet(marker="####")@prophet.early=2.5,5,7.5,10',
    "credit@credit.tau=0.7,0.8,0.9,0.95",
    "local_leap@local_leap.tau=0.8,0.85,0.9,0.95",
    "klass@klass.kl=0.005,0.015,0.05,0.15",
)


def method_of(spec: str) -> str:
    """A method's name: its plugins without options (``threshold+eot``); the baseline's for ``""``."""
    names = [item.name for item in parse_spec(spec)]
    return "+".join(names) if names else BASELINE_METHOD


@attrs.frozen
class Entry:
    """One combination to benchmark.

    Attributes:
        spec: the strategy spec ("" is LLaDA low-confidence).
        model: registered name, checkpoint directory or hub id.
        gen_length / block_length / steps: decode settings (None: the run's defaults).
        tokens_per_step: alternative to ``steps`` (steps = gen_length / tokens_per_step).
        label: name in tables and legends (default from spec and steps).
        method: the curve the entry belongs to (default: see :attr:`method_name`).
        knob / knob_value: the swept knob and its value, for sweep entries.
        baseline: the entry speedups are measured against.
    """

    spec: str = ""
    model: str = "default"
    gen_length: int | None = None
    block_length: int | None = None
    steps: int | None = None
    tokens_per_step: int | None = None
    label: str | None = None
    method: str | None = None
    knob: str | None = None
    knob_value: Any = None
    baseline: bool = False

    def __attrs_post_init__(self) -> None:
        for name in ("gen_length", "block_length", "steps", "tokens_per_step"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"bench entry {self.spec!r}: {name} must be a positive integer, got {value!r}")
        if self.steps is not None and self.tokens_per_step is not None:
            raise ConfigError(f"bench entry {self.spec!r}: give steps or tokens_per_step, not both")

    @property
    def resolved_steps(self) -> int:
        """Steps over the whole response (needs ``gen_length``)."""
        G = self._gen()
        if self.tokens_per_step is not None:
            if G % self.tokens_per_step:
                name = self.label or self.spec or BASELINE_METHOD
                raise ConfigError(f"bench entry {name!r}: gen_length {G} is not a multiple of tokens_per_step "
                                  f"{self.tokens_per_step}")
            return G // self.tokens_per_step
        return self.steps if self.steps is not None else G

    def _gen(self) -> int:
        if self.gen_length is None:
            raise ConfigError(f"bench entry {self.spec!r} has no gen_length yet; expand it with expand()")
        return self.gen_length

    @property
    def display(self) -> str:
        """The entry's label: its own, else spec (or the baseline's name) with tokens per step when not 1."""
        if self.label:
            return self.label
        name = self.spec or BASELINE_METHOD
        if self.gen_length is not None:
            steps = self.resolved_steps
            if steps != self.gen_length:
                per = self.gen_length / steps
                name += f" {per:g}/step" if per >= 1 else f" {steps} steps"
        return name

    @property
    def method_name(self) -> str:
        """The curve the entry is drawn on: its ``method``; else its plugins' names when it is a
        sweep point or its spec fixes no option; else the spec as written, since an entry such as
        ``eot(cut=committed)`` is a variant of its own, not a point of ``eot``'s curve."""
        if self.method:
            return self.method
        if self.knob is not None or not any(item.options for item in parse_spec(self.spec)):
            return method_of(self.spec)
        return self.spec

    @property
    def is_baseline_config(self) -> bool:
        """LLaDA low-confidence at one token per step."""
        return method_of(self.spec) == BASELINE_METHOD and self.gen_length is not None \
            and self.resolved_steps == self.gen_length


def _coerce(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(text.lower(), text)


def with_knob(entry: Entry, knob: str, value: Any) -> Entry:
    """``entry`` with ``knob`` set to ``value`` (``steps``, ``tokens_per_step`` or ``plugin.option``)."""
    method = entry.method or method_of(entry.spec)
    label = f"{method} {knob.split('.')[-1]}={value:g}" if isinstance(value, (int, float)) \
        else f"{method} {knob.split('.')[-1]}={value}"
    common = {"knob": knob, "knob_value": value, "label": label, "method": method}
    if knob == "steps":
        return attrs.evolve(entry, steps=int(value), tokens_per_step=None, **common)
    if knob == "tokens_per_step":
        return attrs.evolve(entry, tokens_per_step=int(value), steps=None, **common)
    plugin, _, option = knob.partition(".")
    if not option:
        raise ConfigError(f"sweep knob {knob!r}: use steps, tokens_per_step or plugin.option (e.g. threshold.tau)")
    items = parse_spec(entry.spec)
    if plugin not in [item.name for item in items]:
        raise ConfigError(f"sweep knob {knob!r}: plugin {plugin!r} is not in the spec {entry.spec!r}")
    items = [SpecItem(name=i.name, options={**i.options, option: value}, wins=i.wins) if i.name == plugin else i
             for i in items]
    return attrs.evolve(entry, spec=format_spec(items), **common)


def parse_sweep(text: str, **defaults: Any) -> list[Entry]:
    """``SPEC@KNOB=V1,V2,...`` -> one entry per value."""
    spec, at, rest = text.rpartition("@")
    knob, eq, values = rest.partition("=")
    if not at or not eq or not knob.strip() or not values.strip():
        raise ConfigError(f"bad sweep {text!r}: write SPEC@KNOB=V1,V2,... e.g. 'threshold@threshold.tau=0.7,0.9' "
                          "or '@tokens_per_step=1,2,4'")
    base = Entry(spec=spec.strip(), **defaults)
    return [with_knob(base, knob.strip(), _coerce(v.strip())) for v in values.split(",") if v.strip()]


def entry_from_mapping(raw: dict[str, Any], **defaults: Any) -> list[Entry]:
    """Entries of one matrix-file item (several when it has a ``sweep``)."""
    if not isinstance(raw, dict) or "spec" not in raw:
        raise ConfigError(f"bad matrix entry {raw!r}: each entry is a mapping with at least 'spec'")
    known = {f.name for f in attrs.fields(Entry)} - {"knob", "knob_value", "baseline"}
    unknown = set(raw) - known - {"sweep"}
    if unknown:
        raise ConfigError(f"matrix entry {raw.get('spec')!r}: unknown keys {sorted(unknown)}; known: "
                          f"{sorted(known | {'sweep'})}")
    fields = {**defaults, **{k: v for k, v in raw.items() if k != "sweep"}}
    fields["spec"] = str(fields.get("spec") or "")
    entry = Entry(**fields)
    sweep = raw.get("sweep")
    if sweep is None:
        return [entry]
    if not isinstance(sweep, dict) or "knob" not in sweep or not isinstance(sweep.get("values"), list):
        raise ConfigError(f"matrix entry {entry.spec!r}: sweep must be {{knob: ..., values: [...]}}")
    return [with_knob(entry, str(sweep["knob"]), v) for v in sweep["values"]]


def read_matrix(path: str | Path, **defaults: Any) -> list[Entry]:
    """Entries from a JSON or YAML matrix file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"matrix file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"matrix file {path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("entries")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"matrix file {path}: expected a non-empty list of entries (or {{'entries': [...]}})")
    return [e for raw in data for e in entry_from_mapping(raw, **defaults)]


def installed(entries: Iterable[Entry], *, optional: bool) -> tuple[list[Entry], list[tuple[Entry, str]]]:
    """Entries whose spec resolves against the installed plugins.  A bad spec is an error unless
    ``optional`` (the defaults), where it is skipped with its reason."""
    keep, skipped = [], []
    for entry in entries:
        try:
            Strategy.parse(entry.spec)
        except (SpecError, DllmError) as exc:
            if not optional:
                raise ConfigError(f"bench entry {entry.display!r}: {exc}") from exc
            skipped.append((entry, str(exc).splitlines()[0]))
            continue
        keep.append(entry)
    return keep, skipped


def expand(entries: Sequence[Entry], gen_lengths: Sequence[int], *, block_length: int | None = None,
           block_lengths: dict[str, int | None] | None = None, baseline_model: str | None = None) -> list[Entry]:
    """Give every entry a gen length (one copy per gen length of the run when it has none) and a
    block length (the entry's, else ``block_length``, else the model's recommended one from
    ``block_lengths``, else 32, capped at the gen length); add a baseline per (model, gen length)
    unless one is there (only for ``baseline_model`` when given: every model is then compared with
    that model's baseline, e.g. a distilled model with its teacher); drop duplicates."""
    block_lengths = block_lengths or {}
    out: list[Entry] = []
    for entry in entries:
        lengths = [entry.gen_length] if entry.gen_length is not None else list(gen_lengths)
        for G in lengths:
            B = entry.block_length or block_length or block_lengths.get(entry.model) or DEFAULT_BLOCK_LENGTH
            out.append(attrs.evolve(entry, gen_length=G, block_length=min(B, G)))
    models = list(dict.fromkeys(e.model for e in out))
    if baseline_model is not None and baseline_model not in models:
        models.insert(0, baseline_model)
    tasks = dict.fromkeys((baseline_model if baseline_model is not None else e.model, e.gen_length) for e in out)
    for model, G in tasks:
        same = [i for i, e in enumerate(out) if e.model == model and e.gen_length == G and e.is_baseline_config]
        if same:
            out[same[0]] = attrs.evolve(out[same[0]], baseline=True)
        else:
            B = block_length or block_lengths.get(model) or DEFAULT_BLOCK_LENGTH
            out.insert(0, Entry(spec="", model=model, gen_length=G, block_length=min(B, G), baseline=True,
                                label=f"{BASELINE_METHOD} (baseline)", method=BASELINE_METHOD))
    unique: dict[tuple, Entry] = {}
    for e in out:
        key = (e.spec, e.model, e.gen_length, e.block_length, e.resolved_steps)
        if key not in unique or e.baseline:
            unique[key] = e
    # Grouped by (model, gen length), the baseline first, otherwise in the order given.
    return sorted(unique.values(), key=lambda e: (models.index(e.model), e.gen_length, not e.baseline))
