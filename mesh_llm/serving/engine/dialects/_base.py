"""What every family plugs into: the `Dialect` record its table entry is, the region parser's
protocol (`Region` reads the text after one of the family's opening markers, one `Step` at a
time), and the feed loop every answer parser shares.

Region parsers report calls with index -1 and an empty id (`call_start`, `call_args`,
`CALL_END`); the answer parser numbers them and gives them ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh_llm.serving.engine._tools import new_call_id
from mesh_llm.serving.engine.dialects._events import CallArgs, CallEnd, CallStart, Event
from mesh_llm.serving.engine.dialects._gbnf import ToolRules

Schemas = dict[str, dict[str, Any]]  # tool name -> its parameters schema
CallSpec = tuple[str, dict[str, Any]]  # (name, arguments): one call, as a writer is given it


@dataclass
class Step:
    """What a region parser made of the region's text so far."""

    events: list[Event] = field(default_factory=list)  # index -1 and id "": the driver fills them
    done_at: int | None = None  # where the region ended (the rest goes back to content)
    reject: bool = False  # no call of ours: the region's text up to done_at is content


class Region(Protocol):
    def step(self, text: str, final: bool) -> Step: ...


def call_start(name: str, call_id: str = "") -> CallStart:
    return CallStart(-1, call_id, name)


def call_args(text: str) -> CallArgs:
    return CallArgs(-1, text)


CALL_END = CallEnd(-1)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class BaseParser:
    """What every answer parser shares: the buffered text, the calls counted and the feed loop."""

    def __init__(self, dialect: Dialect, schemas: Schemas, new_id: Callable[[], str] | None) -> None:
        self.dialect = dialect
        self.schemas = schemas
        self._new_id = new_id or dialect.new_id
        self._buf = ""
        self._calls = 0

    @property
    def called(self) -> bool:
        """Whether a call has started."""
        return self._calls > 0

    def feed(self, text: str) -> list[Event]:
        """Events for the next piece of the answer."""
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[Event]:
        """The answer is complete: whatever was held back."""
        return self._run(final=True)

    def _run(self, final: bool) -> list[Event]:
        raise NotImplementedError


@dataclass(frozen=True)
class Dialect:
    """One family's way of writing calls and reasoning (see the package docstring's table)."""

    name: str
    detect: Callable[[str], bool]  # does a chat template's source name this family's markers?
    openers: tuple[str, ...]  # markers that open a call region in an answer
    region: Callable[[str, Schemas], Region]  # the region parser, given the opener met
    arguments: str  # how arguments are written: "json" (one object) or "xml" (one tag per argument)
    write: Callable[[Sequence[CallSpec]], str]
    call_grammar: Callable[[ToolRules], str] | None  # None: the plain-JSON forced call
    reasoning: tuple[str, str] | None = None  # open and close tags
    markers: tuple[str, ...] = ()  # every marker text (control tokens with these texts are shown)
    value_close: str = ""  # with "xml" arguments: the tag that ends a value written as bare text
    json_leads: tuple[str, ...] = ()  # openings of an answer that may be wholly a JSON call
    json_lead_streams: bool = False  # such a call, written name first, streams (else read whole)
    new_id: Callable[[], str] = new_call_id
    harmony: bool = False
