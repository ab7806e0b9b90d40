"""A bench run's journal: every finished entry is appended to ``OUT/journal.jsonl`` as it ends, so
that ``dllm-strategies bench --resume`` continues a run that was cut off (a session ending, a
crash) instead of measuring its finished entries again.

The first line holds the run's settings (problems, seed, batch size, chat, example, device,
dtype); each further line one entry: the entry itself, its per-problem records, its trajectory
and which process measured it.  A run resumes only with the same settings; an entry is reused only
when its expanded entry (model, spec, lengths, steps, label, ...) is identical.  Entries measured
by different processes are named in the results (``meta["processes"]``), because their wall
clocks were taken at different times.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from dllm_strategies.errors import ConfigError

FILE = "journal.jsonl"


def process_id() -> str:
    """Names this process in the journal: host, pid and start time."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.strftime('%Y-%m-%dT%H:%M:%S')}"


@attrs.define
class Journal:
    """The journal of one bench output directory (see the module docstring)."""

    path: Path
    settings: dict[str, Any]
    process: str = attrs.field(factory=process_id)
    done: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    @classmethod
    def open(cls, out: Path, settings: dict[str, Any], *, resume: bool) -> "Journal":
        """A journal in ``out``: the existing one when ``resume`` (its settings must equal
        ``settings``), else a new one (an old journal there is replaced)."""
        path = Path(out) / FILE
        journal = cls(path=path, settings=settings)
        if resume and path.exists():
            lines = iter(path.read_text().splitlines())
            head = json.loads(next(lines, "{}")).get("settings")
            if head != settings:
                differ = sorted(k for k in {*settings, *(head or {})} if (head or {}).get(k) != settings.get(k))
                raise ConfigError(f"--resume: {path} was written with other settings ({', '.join(differ)} differ: "
                                  f"was {[(head or {}).get(k) for k in differ]}, now {[settings.get(k) for k in differ]}); "
                                  "rerun with the same options, or without --resume to start a new run")
            for line in lines:
                if line.strip():
                    row = json.loads(line)
                    journal.done[key(row["entry"])] = row
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"settings": settings}) + "\n")
        return journal

    def find(self, entry: Any) -> dict[str, Any] | None:
        """The journal row of ``entry`` if a process measured it already."""
        return self.done.get(key(attrs.asdict(entry)))

    def add(self, entry: Any, records: list[Any], trajectory: Any) -> None:
        """Append one finished entry (flushed at once)."""
        row = {"entry": attrs.asdict(entry), "process": self.process,
               "records": [attrs.asdict(r) for r in records],
               "trajectory": attrs.asdict(trajectory) if trajectory is not None else None}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key(row["entry"])] = row

    def processes(self) -> Iterator[str]:
        return iter(dict.fromkeys(row["process"] for row in self.done.values()))


def model_fingerprint(name: str) -> str:
    """Identifies the weights a model name stands for, so that a resumed run refuses a model that
    changed in between: a hash of its config and of each weight file's size, head and tail
    (cheap for an 8B checkpoint).  A name that is neither registered nor a directory (a hub id)
    stands for itself."""
    import hashlib

    from dllm_strategies.models.loading import registered_or_local_dir

    path = registered_or_local_dir(name)
    if path is None or not path.is_dir():
        return name
    digest = hashlib.sha256()
    for file in sorted([*path.glob("config.json"), *path.glob("*.safetensors"), *path.glob("*.bin")]):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def key(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True)
