"""Reading text that is still being generated: what may begin a marker (held back until it is
known), argument text streamed up to an end marker, and the JSON scanner that finds where a call's
arguments end and streams them piece by piece.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from mesh_llm.serving.engine._tool_formats import BAD_JSON, skip_space
from mesh_llm.serving.engine.dialects._base import call_args
from mesh_llm.serving.engine.dialects._events import Event


def marker_tail(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


def could_start(text: str, pos: int, marker: str) -> bool:
    """Whether the text from `pos` on is a (possibly empty) beginning of `marker`."""
    rest = text[pos:]
    return marker.startswith(rest)


class ArgsStream:
    """Streams raw argument text up to an end marker, holding back what may begin the marker and
    trailing whitespace, so that every chunking sends the same text."""

    def __init__(self, start: int, end_marker: str) -> None:
        self.pos = start  # the next character not yet sent
        self.end_marker = end_marker
        self.started = False

    def step(self, text: str, final: bool) -> tuple[list[Event], int | None]:
        """Events, and where the end marker ends once the arguments are complete."""
        end = text.find(self.end_marker, self.pos)
        complete = end >= 0 or final
        stop = end if end >= 0 else len(text) if final else len(text) - marker_tail(text, [self.end_marker])
        piece = text[self.pos : max(stop, self.pos)]
        if not self.started:
            self.pos += len(piece) - len(piece.lstrip())
            piece = piece.lstrip()
        piece = piece.rstrip()  # trailing space waits for what follows it (or is dropped at the end)
        events: list[Event] = []
        if piece:
            events.append(call_args(piece))
            self.started = True
            self.pos += len(piece)
        if not complete:
            return events, None
        return events, end + len(self.end_marker) if end >= 0 else len(text)


class JsonScan:
    """Finds where a JSON value generated piece by piece ends: the bracket that brings the depth
    back to zero, read outside strings. `stop`, met outside a string, ends the value early (the
    model closed its block without closing the JSON); text that may begin it waits."""

    _PLAIN = re.compile(r'[^"\\{}\[\]<]+')  # characters that change nothing, outside a string
    _IN_STRING = re.compile(r'[^"\\]+')

    def __init__(self, start: int, stop: str = "", depth: int = 0) -> None:
        self.pos = start  # the next character to read
        self.stop = stop
        self.depth = depth
        self.in_string = False

    def advance(self, text: str, final: bool) -> int | None:
        """Where the value ends (just after its closing bracket, or at `stop`), or None for now."""
        n = len(text)
        i = self.pos
        while i < n:
            if self.in_string:
                m = self._IN_STRING.match(text, i)
                if m:
                    i = m.end()
                    continue
                if text[i] == "\\":
                    if i + 1 == n:
                        break  # the escaped character has not come yet
                    i += 2
                    continue
                self.in_string = False
                i += 1
                continue
            m = self._PLAIN.match(text, i)
            if m:
                i = m.end()
                continue
            c = text[i]
            if c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.pos = i + 1
                    return i + 1
            elif self.stop and text.startswith(self.stop, i):
                self.pos = i
                return i
            elif self.stop and not final and self.stop.startswith(text[i:]):
                break
            i += 1
        self.pos = i
        return n if final else None


WAIT = -1  # the text so far may still become what is looked for
NO = -2  # it cannot


class JsonArgs(JsonScan):
    """A call's JSON arguments (from their opening brace on), sent as they are read."""

    def __init__(self, start: int, stop: str = "") -> None:
        super().__init__(start, stop)
        self.sent = start  # how much of the text has been sent
        self.end: int | None = None

    def stream(self, text: str, final: bool, events: list[Event]) -> int | None:
        """Adds what was read since the last call to `events`; where the arguments end, once
        they have."""
        if self.end is None:
            self.end = self.advance(text, final)
            stop = self.pos if self.end is None else self.end
            if stop > self.sent:
                events.append(call_args(text[self.sent : stop]))
                self.sent = stop
        return self.end


def expect(text: str, pos: int, options: Sequence[str], final: bool) -> int:
    """Where the first of `options` standing at `pos` (after whitespace) ends, or WAIT or NO."""
    p = skip_space(text, pos)
    for option in options:
        if text.startswith(option, p):
            return p + len(option)
    if not final and any(option.startswith(text[p:]) for option in options):
        return WAIT
    return NO


_ARGUMENT_KEYS = ('"arguments"', '"parameters"')
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*', re.DOTALL)


def _string_end(text: str, quote: int) -> int:
    """Where the JSON string opened at `quote` ends (after its closing quote), or WAIT."""
    end = _STRING_BODY.match(text, quote + 1).end()  # type: ignore[union-attr]
    return end + 1 if end < len(text) and text[end] == '"' else WAIT


def json_call_head(text: str, final: bool, start: int = 0) -> tuple[str, int] | int:
    """`{"name": "n", "arguments": ` with an object after it: (name, where the object starts), or
    WAIT, or NO for other shapes (other key orders, arguments written as a string), which are
    read whole."""
    p = start
    for options in (("{",), ('"name"',), (":",)):
        if (p := expect(text, p, options, final)) < 0:
            return p
    if (q := expect(text, p, ('"',), final)) < 0:
        return q
    if (p := _string_end(text, q - 1)) < 0:
        return NO if final else p
    try:
        name = json.loads(text[q - 1 : p])
    except BAD_JSON:
        return NO
    rest: tuple[Sequence[str], ...] = ((",",), _ARGUMENT_KEYS, (":",), ("{",))
    for keys in rest:
        if (p := expect(text, p, keys, final)) < 0:
            return p
    return (name, p - 1) if isinstance(name, str) else NO
