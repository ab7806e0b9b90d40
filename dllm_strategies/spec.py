"""Strategy specs: ``threshold(tau=0.9)+eot``.

Grammar::

    spec   := item ("+" item)*
    item   := name ["(" [option ("," option)*] ")"] ["!"]
    option := key "=" value
    value  := number | "string" | 'string' | true | false | none | word

A trailing ``!`` marks the plugin that wins every exclusive hook it shares with another
chosen plugin.  An empty spec means the core defaults (LLaDA low-confidence decoding).
Parsing checks only syntax; plugin names and option types are checked against the
installed plugins by :meth:`dllm_strategies.strategy.Strategy.parse`.  Every problem raises
:class:`~dllm_strategies.errors.SpecError` with the offending position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from dllm_strategies.errors import SpecError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)")
_WORD = re.compile(r"[^\s,()+!=\"']+")


@attrs.frozen
class SpecItem:
    """One chosen plugin: ``name``, raw ``options`` and whether it ``wins`` conflicts."""

    name: str
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    wins: bool = False

    def __str__(self) -> str:
        args = ",".join(f"{k}={_format(v)}" for k, v in self.options.items())
        return (f"{self.name}({args})" if args else self.name) + ("!" if self.wins else "")


def _format(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if _WORD.fullmatch(value) is None or value.lower() in ("true", "false", "none") else value
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def format_spec(items: Iterable[SpecItem]) -> str:
    return "+".join(str(item) for item in items)


class _Parser:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def fail(self, what: str) -> SpecError:
        caret = " " * self.pos + "^"
        return SpecError(f"bad strategy spec: {what} at position {self.pos}\n  {self.text}\n  {caret}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "end of spec"
            raise self.fail(f"expected {char!r}, found {found}")
        self.pos += 1

    def match(self, pattern: re.Pattern) -> str | None:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        return m.group(0)

    def items(self) -> list[SpecItem]:
        if not self.text.strip():
            return []
        out = [self.item()]
        while self.peek() == "+":
            self.pos += 1
            out.append(self.item())
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r} (join plugins with '+')")
        return out

    def item(self) -> SpecItem:
        name = self.match(_NAME)
        if name is None:
            raise self.fail("expected a plugin name")
        options: dict[str, Any] = {}
        if self.peek() == "(":
            self.pos += 1
            if self.peek() != ")":
                while True:
                    key = self.match(_NAME)
                    if key is None:
                        raise self.fail(f"expected an option name in {name}(...)")
                    if key in options:
                        raise self.fail(f"option {key!r} given twice to {name}")
                    self.expect("=")
                    options[key] = self.value()
                    if self.peek() != ",":
                        break
                    self.pos += 1
            self.expect(")")
        wins = False
        if self.peek() == "!":
            self.pos += 1
            wins = True
        return SpecItem(name=name, options=options, wins=wins)

    def value(self) -> Any:
        char = self.peek()
        if char in ("'", '"'):
            end = self.text.find(char, self.pos + 1)
            if end < 0:
                raise self.fail("unterminated string")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        start = self.pos
        number = self.match(_NUMBER)
        if number is not None and (self.pos >= len(self.text) or not _WORD.match(self.text, self.pos)):
            return float(number) if any(c in number for c in ".eE") else int(number)
        self.pos = start
        word = self.match(_WORD)
        if word is None:
            raise self.fail("expected a value")
        return {"true": True, "false": False, "none": None}.get(word.lower(), word)


def parse_spec(spec: str | Iterable[Any] | None) -> list[SpecItem]:
    """Parse a spec string, or pass through a list of ``SpecItem``, names or ``(name, options)``."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return _Parser(spec).items()
    items = []
    for entry in spec:
        if isinstance(entry, SpecItem):
            items.append(entry)
        elif isinstance(entry, str):
            items.extend(_Parser(entry).items())
        elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], Mapping):
            items.append(SpecItem(name=entry[0], options=entry[1]))
        else:
            raise SpecError(f"bad strategy entry {entry!r}: use 'name(opt=value)' or (name, {{options}})")
    return items
