"""What a dialect's parser reports as it reads an answer, and what a run of reports adds up to.

Content and reasoning arrive as text pieces; a call as `CallStart` (its index, id and name),
`CallArgs` pieces of its JSON arguments, and `CallEnd`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArgs:
    index: int
    text: str


@dataclass(frozen=True)
class CallEnd:
    index: int


Event = Content | Reasoning | CallStart | CallArgs | CallEnd


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Parsed:
    """A whole answer: its content, its reasoning and its calls."""

    content: str
    reasoning: str
    calls: tuple[ParsedCall, ...]


def collect_events(events: Iterable[Event]) -> Parsed:
    """What a run of events adds up to (the whole answer of a stream)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, list[str]] = {}
    heads: dict[int, CallStart] = {}
    for ev in events:
        if isinstance(ev, Content):
            content.append(ev.text)
        elif isinstance(ev, Reasoning):
            reasoning.append(ev.text)
        elif isinstance(ev, CallStart):
            heads[ev.index] = ev
            calls[ev.index] = []
        elif isinstance(ev, CallArgs):
            calls[ev.index].append(ev.text)
    found = tuple(ParsedCall(heads[k].id, heads[k].name, "".join(calls[k])) for k in sorted(heads))
    return Parsed("".join(content), "".join(reasoning), found)
