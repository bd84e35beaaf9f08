"""The tool-call and reasoning dialects models write, in one table, and a streaming parser for each.

A model family writes calls and reasoning in its own markup. `detect_dialect` picks the family
from the chat template's source (which names the family's markers), never from a file name;
`DIALECTS` holds one entry per family:

    family        calls                                                          reasoning
    hermes        <tool_call>{"name": n, "arguments": {...}}</tool_call>          -
    qwen3         as hermes                                                      <think>…</think>
    qwen3-coder   <tool_call><function=n><parameter=k>v</parameter></function>…  <think>…</think>
    glm           <tool_call>n<arg_key>k</arg_key><arg_value>v</arg_value>…      <think>…</think>
    harmony       <|channel|>commentary to=functions.n <|constrain|>json<|message|>{...}
                  (analysis channel: reasoning; final channel: content)
    deepseek-r1   <|tool▁calls▁begin|><|tool▁call▁begin|>function<|tool▁sep|>n\n```json\n{...}\n```…
    deepseek-v3.1 <|tool▁calls▁begin|><|tool▁call▁begin|>n<|tool▁sep|>{...}<|tool▁call▁end|>…
                  (DeepSeek's bars are U+FF5C, the fullwidth vertical line)
    kimi-k2       <|tool_calls_section_begin|><|tool_call_begin|>functions.n:0<|tool_call_argument_begin|>{...}…
    llama3        {"name": n, "parameters": {...}}  (the whole answer, or after <|python_tag|>)
    mistral       [TOOL_CALLS][{"name": n, "arguments": {...}, "id": ...}]  or  [TOOL_CALLS]n[ARGS]{...}
    (unknown)     today's fallback: hermes blocks, mistral, or an answer that is wholly plain JSON

`OutputParser` reads a chat answer as it is generated: fed text pieces, it returns events
(`Content`, `Reasoning`, `CallStart`, `CallArgs`, `CallEnd`). Only text that can begin one of the
dialect's own markers is held back, and arguments stream as they are generated (JSON arguments
after a call's name, piece by piece up to their closing brace; a call written arguments first is
sent whole once complete); a whole answer is parsed by feeding it at once, so a whole answer and
the concatenation of a stream agree whatever the chunking. Per family there is only a
call-region parser (what follows the family's opening marker) and its entry in the table: how calls
are written (`write_calls`, for prompts of templates that cannot list tools) and the grammar that
forces a call in the family's own syntax (`forced_call_grammar`).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from mesh_llm.serving.engine._tool_formats import (
    BAD_JSON,
    DECODER,
    MISTRAL_ARGS_TAG,
    MISTRAL_CALL_ID,
    MISTRAL_CALLS,
    PYTHON_TAG,
    Calls,
    call_of,
    json_calls,
    mistral_calls,
    skip_space,
    whole_json,
)
from mesh_llm.serving.engine._tools import DEFAULT_PARAMETERS, new_call_id

# ── events ─────────────────────────────────────────────────────────────────────────────────────


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


# ── helpers shared by the region parsers ───────────────────────────────────────────────────────

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
Schemas = dict[str, dict[str, Any]]  # tool name -> its parameters schema


def marker_tail(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


def _could_start(text: str, pos: int, marker: str) -> bool:
    """Whether the text from `pos` on is a (possibly empty) beginning of `marker`."""
    rest = text[pos:]
    return marker.startswith(rest)


def _xml_value(raw: str, schema: dict[str, Any] | None) -> str:
    """The JSON text of an argument written as bare text (Qwen3-Coder, GLM): a string parameter's
    text is the string itself; other values are JSON (or Python's True/False/None, which a
    template's `| string` writes)."""
    kind = (schema or {}).get("type")
    if kind == "string":
        return json.dumps(raw, ensure_ascii=False)
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False)
    except BAD_JSON:
        pass
    python = {"True": "true", "False": "false", "None": "null"}
    if raw.strip() in python and kind in ("boolean", "null", None):
        return python[raw.strip()]
    return json.dumps(raw, ensure_ascii=False)


@dataclass
class _Step:
    """What a region parser made of the region's text so far."""

    events: list[Event] = field(default_factory=list)  # index -1 and id "": the driver fills them
    done_at: int | None = None  # where the region ended (the rest goes back to content)
    reject: bool = False  # no call of ours: the region's text up to done_at is content


class _Region(Protocol):
    def step(self, text: str, final: bool) -> _Step: ...


def _start(name: str, call_id: str = "") -> CallStart:
    return CallStart(-1, call_id, name)


def _args(text: str) -> CallArgs:
    return CallArgs(-1, text)


_END = CallEnd(-1)


class _ArgsStream:
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
            events.append(_args(piece))
            self.started = True
            self.pos += len(piece)
        if not complete:
            return events, None
        return events, end + len(self.end_marker) if end >= 0 else len(text)


# ── region parsers: one per family ─────────────────────────────────────────────────────────────


class _JsonScan:
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


_WAIT = -1  # the text so far may still become what is looked for
_NO = -2  # it cannot


class _JsonArgs(_JsonScan):
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
                events.append(_args(text[self.sent : stop]))
                self.sent = stop
        return self.end


def _expect(text: str, pos: int, options: Sequence[str], final: bool) -> int:
    """Where the first of `options` standing at `pos` (after whitespace) ends, or _WAIT or _NO."""
    p = skip_space(text, pos)
    for option in options:
        if text.startswith(option, p):
            return p + len(option)
    if not final and any(option.startswith(text[p:]) for option in options):
        return _WAIT
    return _NO


_ARGUMENT_KEYS = ('"arguments"', '"parameters"')
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*', re.DOTALL)


def _string_end(text: str, quote: int) -> int:
    """Where the JSON string opened at `quote` ends (after its closing quote), or _WAIT."""
    end = _STRING_BODY.match(text, quote + 1).end()  # type: ignore[union-attr]
    return end + 1 if end < len(text) and text[end] == '"' else _WAIT


def _json_call_head(text: str, final: bool, start: int = 0) -> tuple[str, int] | int:
    """`{"name": "n", "arguments": ` with an object after it: (name, where the object starts), or
    _WAIT, or _NO for other shapes (other key orders, arguments written as a string), which are
    read whole."""
    p = start
    for options in (("{",), ('"name"',), (":",)):
        if (p := _expect(text, p, options, final)) < 0:
            return p
    if (q := _expect(text, p, ('"',), final)) < 0:
        return q
    if (p := _string_end(text, q - 1)) < 0:
        return _NO if final else p
    try:
        name = json.loads(text[q - 1 : p])
    except BAD_JSON:
        return _NO
    rest: tuple[Sequence[str], ...] = ((",",), _ARGUMENT_KEYS, (":",), ("{",))
    for keys in rest:
        if (p := _expect(text, p, keys, final)) < 0:
            return p
    return (name, p - 1) if isinstance(name, str) else _NO


class _HermesRegion:
    """After `<tool_call>`: one JSON object `{"name", "arguments"}` and `</tool_call>`.

    Written name first, the arguments stream as they are generated, up to the brace that closes
    them; any other shape (arguments first, the OpenAI shape, arguments as a string) is read once
    the object is complete and sent as one piece."""

    def __init__(self, schemas: Schemas) -> None:
        self.names = schemas
        self.whole = False  # the call is read once complete
        self.args: _JsonArgs | None = None
        self.rest: _JsonScan | None = None  # the call object after its arguments

    def step(self, text: str, final: bool) -> _Step:
        step = _Step()
        if self.args is None and not self.whole:
            head = _json_call_head(text, final)
            if head == _WAIT:
                return step
            if not isinstance(head, tuple) or head[0] not in self.names:
                self.whole = True
            else:
                step.events.append(_start(head[0]))
                self.args = _JsonArgs(head[1], HERMES_CLOSE)
        if self.args is None:
            return self._whole(text, final)
        if self.rest is None:
            end = self.args.stream(text, final, step.events)
            if end is None:
                return step
            self.rest = _JsonScan(end, HERMES_CLOSE, depth=1)
            if text.startswith(HERMES_CLOSE, end):  # the arguments were cut off by the close tag
                self.rest.pos, self.rest.depth = end, 0
        after = self.rest.advance(text, final) if self.rest.depth > 0 else self.rest.pos
        if after is None:
            return step
        p = skip_space(text, after)
        if text.startswith(HERMES_CLOSE, p):
            p += len(HERMES_CLOSE)
        elif not final and _could_start(text, p, HERMES_CLOSE):
            return step
        else:  # the close tag never came: the call ends with its object
            p = after
        step.events.append(_END)
        step.done_at = p
        return step

    def _whole(self, text: str, final: bool) -> _Step:
        close = text.find(HERMES_CLOSE)
        start = skip_space(text, 0)
        try:
            value, after = DECODER.raw_decode(text, start)
        except BAD_JSON:
            if close >= 0:
                return _Step(done_at=close + len(HERMES_CLOSE), reject=True)
            return _Step(done_at=len(text), reject=True) if final else _Step()
        after = skip_space(text, after)
        if text.startswith(HERMES_CLOSE, after):
            end = after + len(HERMES_CLOSE)
        elif not final and _could_start(text, after, HERMES_CLOSE):
            return _Step()
        elif after == len(text) or text.startswith(HERMES_OPEN, after):  # the close tag never came
            end = after
        else:
            return _Step(done_at=close + len(HERMES_CLOSE) if close >= 0 else len(text), reject=True)
        call = call_of(value, self.names)
        if call is None:
            return _Step(done_at=end, reject=True)
        return _Step([_start(call[0]), _args(call[1]), _END], done_at=end)


class _XmlRegion:
    """Calls whose arguments are written one by one as tagged text (Qwen3-Coder, GLM).

    The arguments stream as JSON, one argument at a time: `{"k": v`, `, "k2": v2`, then `}`.
    """

    def __init__(
        self,
        schemas: Schemas,
        head: re.Pattern[str],
        key_open: str,
        key_close: str,
        value_open: str,
        value_close: str,
        call_close: str,
        region_close: str,
        strip_newlines: bool,
    ) -> None:
        self.schemas = schemas
        self.head = head
        self.key_open, self.key_close = key_open, key_close
        self.value_open, self.value_close = value_open, value_close
        self.call_close, self.region_close = call_close, region_close
        self.block_end = region_close or call_close  # where a block that is no call of ours ends
        self.strip_newlines = strip_newlines
        self.name: str | None = None
        self.pos = 0
        self.n_args = 0
        self.call_done = False

    def step(self, text: str, final: bool) -> _Step:
        step = _Step()
        if self.name is None:
            m = self.head.match(text)
            block_end = text.find(self.block_end)
            rejected = _Step(done_at=block_end + len(self.block_end), reject=True) if block_end >= 0 else None
            if m is None or m.group(1).strip() not in self.schemas:
                if rejected is None and (final or m is not None):
                    rejected = _Step(done_at=len(text), reject=True) if final else _Step()
                return rejected or _Step()
            name = m.group(1).strip()
            self.name = name
            self.pos = m.end()
            step.events.append(_start(name))
        while not self.call_done:
            p = skip_space(text, self.pos)
            if text.startswith(self.key_open, p):
                got = self._argument(text, p)
                if got is None:
                    if final:  # cut off inside an argument: the call ends with the ones complete
                        self._close(step)
                        step.done_at = len(text)
                    return step
                step.events.append(got)
            elif text.startswith(self.call_close, p):
                self._close(step)
                self.pos = p + len(self.call_close)
            elif not final and (p == len(text) or _could_start(text, p, self.key_open)
                                or _could_start(text, p, self.call_close)):  # fmt: skip
                return step
            else:  # the end of the text, or what no call holds: the call ends here
                self._close(step)
                step.done_at = p
                return step
        p = skip_space(text, self.pos)
        if not self.region_close:
            step.done_at = self.pos
        elif text.startswith(self.region_close, p):
            step.done_at = p + len(self.region_close)
        elif not final and _could_start(text, p, self.region_close):
            return step
        else:
            step.done_at = p
        return step

    def _argument(self, text: str, p: int) -> CallArgs | None:
        key_end = text.find(self.key_close, p)
        if key_end < 0:
            return None
        key = text[p + len(self.key_open) : key_end].strip()
        v = (
            skip_space(text, key_end + len(self.key_close))
            if self.value_open
            else key_end + len(self.key_close)
        )
        if self.value_open:
            if not text.startswith(self.value_open, v):
                return None
            v += len(self.value_open)
        value_end = text.find(self.value_close, v)
        if value_end < 0:
            return None
        raw = text[v:value_end]
        if self.strip_newlines:
            raw = raw.removeprefix("\n").removesuffix("\n")
        properties = self.schemas[self.name or ""].get("properties") or {}
        value = _xml_value(raw, properties.get(key))
        self.pos = value_end + len(self.value_close)
        lead = "{" if self.n_args == 0 else ", "
        self.n_args += 1
        return _args(f"{lead}{json.dumps(key, ensure_ascii=False)}: {value}")

    def _close(self, step: _Step) -> None:
        step.events.append(_args("}" if self.n_args else "{}"))
        step.events.append(_END)
        self.call_done = True


def _qwen3_coder_region(schemas: Schemas) -> _Region:
    return _XmlRegion(
        schemas, re.compile(r"\s*<function=([^>\n]*)>"), "<parameter=", ">", "", "</parameter>",
        "</function>", HERMES_CLOSE, strip_newlines=True,
    )  # fmt: skip


def _glm_region(schemas: Schemas) -> _Region:
    return _XmlRegion(
        schemas, re.compile(r"\s*([^<\n]+?)\s*(?=<|\n)"), "<arg_key>", "</arg_key>", "<arg_value>",
        "</arg_value>", HERMES_CLOSE, "", strip_newlines=False,
    )  # fmt: skip


class _SectionRegion:
    """A section of calls between two markers, each call `begin head sep arguments end`
    (DeepSeek, Kimi K2). Arguments are raw JSON text and stream as they come."""

    def __init__(
        self,
        schemas: Schemas,
        *,
        section_end: str,
        call_begin: str,
        sep: str,
        call_end: str,
        read_head: Callable[[str, str, bool], _Head | None],
    ) -> None:
        self.schemas = schemas
        self.section_end, self.call_begin, self.sep, self.call_end = section_end, call_begin, sep, call_end
        self.read_head = read_head
        self.pos = 0
        self.n_calls = 0
        self.phase = "between"  # between calls | args | tail (after the arguments' own end marker)
        self.args = _ArgsStream(0, call_end)

    def step(self, text: str, final: bool) -> _Step:
        step = _Step()
        while True:
            if self.phase == "args":
                events, end = self.args.step(text, final)
                step.events.extend(events)
                if end is None:
                    return step
                self.pos = end
                if self.args.end_marker == self.call_end:
                    self._close(step)
                else:
                    self.phase = "tail"
            if self.phase == "tail":
                p = skip_space(text, self.pos)
                if text.startswith(self.call_end, p):
                    self.pos = p + len(self.call_end)
                elif not final and _could_start(text, p, self.call_end):
                    return step
                self._close(step)
            p = skip_space(text, self.pos)
            if text.startswith(self.section_end, p):
                step.done_at = p + len(self.section_end)
                return step
            if text.startswith(self.call_begin, p):
                head_at = p + len(self.call_begin)
                sep = text.find(self.sep, head_at)
                head = (
                    None if sep < 0 else self.read_head(text[head_at:sep], text[sep + len(self.sep) :], final)
                )
                if head is None:
                    return self._stop(step, text, p) if final else step
                if head.name not in self.schemas:
                    return self._stop(step, text, p)
                step.events.append(_start(head.name, head.call_id))
                self.args = _ArgsStream(sep + len(self.sep) + head.args_at, head.args_end or self.call_end)
                self.phase = "args"
                continue
            if not final and (
                _could_start(text, p, self.section_end) or _could_start(text, p, self.call_begin)
            ):
                return step
            return self._stop(step, text, p)

    def _close(self, step: _Step) -> None:
        step.events.append(_END)
        self.n_calls += 1
        self.phase = "between"

    def _stop(self, step: _Step, text: str, p: int) -> _Step:
        """What follows is no call: before any call, the whole section is text; after one, the
        section ends here."""
        if self.n_calls == 0:
            end = text.find(self.section_end, p)
            return _Step(done_at=end + len(self.section_end) if end >= 0 else len(text), reject=True)
        step.done_at = p
        return step


@dataclass(frozen=True)
class _Head:
    name: str
    call_id: str  # the model's own id for the call, or "" for a fresh one
    args_at: int  # where the arguments start, counted from just after the separator
    args_end: str | None  # the arguments' own end marker, or None for the call's end marker


_BAR = "\uff5c"  # DeepSeek's markers are fenced by fullwidth vertical lines, not ASCII bars
DS_CALLS_BEGIN, DS_CALLS_END = f"<{_BAR}tool▁calls▁begin{_BAR}>", f"<{_BAR}tool▁calls▁end{_BAR}>"
DS_CALL_BEGIN, DS_CALL_END = f"<{_BAR}tool▁call▁begin{_BAR}>", f"<{_BAR}tool▁call▁end{_BAR}>"
DS_SEP = f"<{_BAR}tool▁sep{_BAR}>"
_DS_FENCE = re.compile(r"([^\n]*)\n```(?:json)?[ \t]*\n")


def _deepseek_head(head: str, after: str, final: bool) -> _Head | None:
    """V3/R1 write `function<sep>name\n```json\n{...}\n```<end>`; V3.1 writes `name<sep>{...}<end>`."""
    if head.strip() == "function" and not after.lstrip().startswith("{"):
        m = _DS_FENCE.match(after)
        return None if m is None else _Head(m.group(1).strip(), "", m.end(), "\n```")
    return _Head(head.strip(), "", 0, None)


def _deepseek_region(schemas: Schemas) -> _Region:
    return _SectionRegion(
        schemas, section_end=DS_CALLS_END, call_begin=DS_CALL_BEGIN, sep=DS_SEP, call_end=DS_CALL_END,
        read_head=_deepseek_head,
    )  # fmt: skip


KIMI_SECTION_BEGIN, KIMI_SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
KIMI_CALL_BEGIN, KIMI_ARGS, KIMI_CALL_END = (
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)


def _kimi_head(head: str, after: str, final: bool) -> _Head:
    """`functions.name:0`: the id the model gives the call, which its template writes back."""
    call_id = head.strip()
    name = call_id.removeprefix("functions.").rsplit(":", 1)[0]
    return _Head(name, call_id, 0, None)


def _kimi_region(schemas: Schemas) -> _Region:
    return _SectionRegion(
        schemas, section_end=KIMI_SECTION_END, call_begin=KIMI_CALL_BEGIN, sep=KIMI_ARGS, call_end=KIMI_CALL_END,
        read_head=_kimi_head,
    )  # fmt: skip


class _ToEndRegion:
    """Calls that run to the end of the answer, read once it is complete: what the streaming JSON
    readers hand over when the text does not open as they expect."""

    def __init__(self, schemas: Schemas, read: Callable[[str, Schemas], Calls | None]) -> None:
        self.schemas = schemas
        self.read = read

    def step(self, text: str, final: bool) -> _Step:
        if not final:
            return _Step()
        calls = self.read(text, self.schemas)
        if not calls:
            return _Step(done_at=len(text), reject=True)
        events: list[Event] = []
        for name, arguments in calls:
            events += [_start(name), _args(arguments), _END]
        return _Step(events, done_at=len(text))


class _JsonListRegion:
    """JSON call objects one after another: Mistral's array after `[TOOL_CALLS]` (or one object),
    Llama's objects joined by `;`. A call written name first streams its arguments as they are
    generated; others are read whole once complete. Text that cannot start such a list goes to
    `fallback` (which reads the whole region once the answer is complete)."""

    def __init__(self, schemas: Schemas, *, array: bool, sep: str, fallback: _Region) -> None:
        self.schemas = schemas
        self.close = "]" if array else ""
        self.sep = sep
        self.fallback = fallback
        self.given_up = False
        self.phase = "open" if array else "item"  # open | item | args | rest | after
        self.pos = 0
        self.calls = 0
        self.args = _JsonArgs(0)
        self.rest = _JsonScan(0)

    def step(self, text: str, final: bool) -> _Step:
        if self.given_up:
            return self.fallback.step(text, final)
        step = _Step()
        while True:
            if self.phase == "open":
                p = _expect(text, self.pos, ("[", "{"), final)
                if p == _WAIT:
                    return step
                if p == _NO:
                    return self._give_up(text, final)
                if text[p - 1] == "{":  # one object, not an array
                    self.close, p = "", p - 1
                self.pos, self.phase = p, "item"
            if self.phase == "item":
                head = _json_call_head(text, final, self.pos)
                if head == _WAIT:
                    return step
                if isinstance(head, tuple) and head[0] in self.schemas:
                    step.events.append(_start(head[0]))
                    self.args, self.phase = _JsonArgs(head[1]), "args"
                elif self.calls == 0:
                    return self._give_up(text, final)
                elif not self._whole_item(text, final, step):
                    return step
            if self.phase == "args":
                end = self.args.stream(text, final, step.events)
                if end is None:
                    return step
                self.rest, self.phase = _JsonScan(end, depth=1), "rest"
            if self.phase == "rest":
                after = self.rest.advance(text, final)
                if after is None:
                    return step
                step.events.append(_END)
                self.calls, self.pos, self.phase = self.calls + 1, after, "after"
            if self.phase == "after":
                p = _expect(text, self.pos, (self.sep, self.close) if self.close else (self.sep,), final)
                if p == _WAIT:
                    return step
                if p == _NO or text[p - 1] == self.close:
                    step.done_at = self.pos if p == _NO else p
                    return step
                self.pos, self.phase = p, "item"

    def _whole_item(self, text: str, final: bool, step: _Step) -> bool:
        """A later call not written name first, read once complete: whether it was (else the
        region ends before it, or waits for more)."""
        try:
            value, end = DECODER.raw_decode(text, skip_space(text, self.pos))
        except BAD_JSON:
            if final:
                step.done_at = self.pos
            return False
        call = call_of(value, self.schemas)
        if call is None:
            step.done_at = self.pos
            return False
        step.events += [_start(call[0]), _args(call[1]), _END]
        self.calls, self.pos, self.phase = self.calls + 1, end, "after"
        return True

    def _give_up(self, text: str, final: bool) -> _Step:
        self.given_up = True
        return self.fallback.step(text, final)


class _MistralNamedRegion:
    """After `[TOOL_CALLS]`: `name[ARGS]{...}` (or `name[CALL_ID]id[ARGS]{...}`), the arguments
    streamed as generated, the next call after another `[TOOL_CALLS]`; anything else is read as
    JSON calls (`_JsonListRegion`)."""

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self.inner: _Region | None = None
        self.pos = 0
        self.calls = 0
        self.args: _JsonArgs | None = None

    def step(self, text: str, final: bool) -> _Step:
        if self.inner is None and self.calls == 0 and self.args is None:
            p = skip_space(text, 0)
            if p == len(text) and not final:
                return _Step()
            if text.startswith(("[", "{"), p):
                self.inner = _JsonListRegion(
                    self.schemas, array=True, sep=",", fallback=_ToEndRegion(self.schemas, mistral_calls)
                )
        if self.inner is not None:
            return self.inner.step(text, final)
        step = _Step()
        while True:
            if self.args is None:
                at = text.find(MISTRAL_ARGS_TAG, self.pos)
                if at < 0 and not final:
                    return step
                name = "" if at < 0 else text[self.pos : at].partition(MISTRAL_CALL_ID)[0].strip()
                start = -1 if at < 0 else skip_space(text, at + len(MISTRAL_ARGS_TAG))
                if start == len(text) and not final:
                    return step
                if name not in self.schemas or not text.startswith("{", start):
                    if self.calls == 0:  # no call of ours: the whole region is text
                        self.inner = _ToEndRegion(self.schemas, mistral_calls)
                        return self.inner.step(text, final)
                    step.done_at = self.pos - len(MISTRAL_CALLS)
                    return step
                step.events.append(_start(name))
                self.args = _JsonArgs(start, MISTRAL_CALLS)
            end = self.args.stream(text, final, step.events)
            if end is None:
                return step
            p = skip_space(text, end)
            if not final and _could_start(text, p, MISTRAL_CALLS):  # another call may follow
                return step
            step.events.append(_END)
            self.calls += 1
            self.args = None
            if not text.startswith(MISTRAL_CALLS, p):
                step.done_at = end
                return step
            self.pos = p + len(MISTRAL_CALLS)


class _JsonOrXmlRegion:
    """Qwen3-Coder's block: its own XML calls, or the Hermes JSON its smaller models also write."""

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self.inner: _Region | None = None

    def step(self, text: str, final: bool) -> _Step:
        if self.inner is None:
            p = skip_space(text, 0)
            if p == len(text) and not final:
                return _Step()
            json_body = text.startswith("{", p)
            self.inner = _HermesRegion(self.schemas) if json_body else _qwen3_coder_region(self.schemas)
        return self.inner.step(text, final)


# ── the driver: content, reasoning and call regions ────────────────────────────────────────────


class _Side:
    """One output (content or reasoning) whose whitespace next to markers is dropped: trailing
    whitespace waits for what follows it, and `lead` drops whitespace right after a marker."""

    def __init__(self, lead: bool) -> None:
        self.lead = lead
        self.space = ""

    def push(self, text: str) -> str:
        if self.lead:
            text = text.lstrip()
            if not text:
                return ""
            self.lead = False
        body = text.rstrip()
        if not body:
            self.space += text
            return ""
        out = self.space + body
        self.space = text[len(body) :]
        return out

    def cut(self) -> None:
        """A marker came: the whitespace before it and right after it is dropped."""
        self.space = ""
        self.lead = True


# Openings of an answer that may be wholly a JSON call (the plain-JSON fallback and Llama 3.x).
_JSON_LEADS = ("{", "[", "```json")


class _Parser:
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


class OutputParser(_Parser):
    """Reads one chat answer in a dialect as it is generated; see the module docstring.

    `schemas` are the callable tools (name -> parameters schema); with none, call markers are
    plain text and only reasoning is split out. `in_reasoning`: the prompt ended by opening a
    reasoning block, so the answer starts inside it.
    """

    def __init__(
        self,
        dialect: Dialect,
        schemas: Schemas,
        *,
        in_reasoning: bool = False,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(dialect, schemas, new_id)
        self._openers = dialect.openers if schemas else ()
        self._json_lead = dialect.json_leads if schemas else ()
        self._mode = "reasoning" if in_reasoning and dialect.reasoning else "content"
        self._region: _Region | None = None
        self._opener = ""
        self._content = _Side(lead=False)
        self._thought = _Side(lead=True)
        self._started = False  # non-space content has been seen (reasoning opens only before it)

    def _run(self, final: bool) -> list[Event]:
        out: list[Event] = []
        step = {"content": self._in_content, "reasoning": self._in_reasoning, "region": self._in_region}
        while step[self._mode](final, out):
            pass
        if final:
            if self._mode == "content" and self._calls == 0 and self._content.space:
                out.append(Content(self._content.space))
            self._content.space = ""
        return out

    def _say(self, text: str, out: list[Event]) -> None:
        piece = self._content.push(text)
        if piece:
            self._started = True
            out.append(Content(piece))

    def _think(self, text: str, out: list[Event]) -> None:
        piece = self._thought.push(text)
        if piece:
            out.append(Reasoning(piece))

    def _in_content(self, final: bool, out: list[Event]) -> bool:
        buf = self._buf
        if self._json_lead and not self._started:
            head = buf.lstrip()
            if not head and not final:
                return False
            if any(head.startswith(m) or m.startswith(head) for m in self._json_lead) and head:
                if self.dialect.json_lead_streams:
                    call = _json_call_head(buf, final, len(buf) - len(head))
                    if call == _WAIT:
                        return False
                    if isinstance(call, tuple) and call[0] in self.schemas:  # a call, written name first
                        self._json_lead = ()
                        self._mode, self._opener = "region", ""
                        self._region = _json_objects(self.schemas)
                        return True
                if not final:
                    return False  # the whole answer may be one call: it is read when complete
                found = whole_json(buf, self.schemas)
                if found is not None:
                    for name, arguments in found:
                        self._emit([_start(name), _args(arguments), _END], out)
                    self._buf = ""
                    return False
            self._json_lead = ()
        markers = list(self._openers)
        if self.dialect.reasoning and not self._started and self._calls == 0:
            markers.append(self.dialect.reasoning[0])
        found_at, marker = min(((buf.find(m), m) for m in markers if m in buf), default=(-1, ""))
        if found_at >= 0:
            self._say(buf[:found_at], out)
            self._content.cut()
            self._buf = buf[found_at + len(marker) :]
            if self.dialect.reasoning and marker == self.dialect.reasoning[0]:
                self._mode = "reasoning"
            else:
                self._mode, self._opener = "region", marker
                self._region = self.dialect.region(marker, self.schemas)
            return True
        keep = 0 if final else marker_tail(buf, markers)
        self._say(buf[: len(buf) - keep], out)
        self._buf = buf[len(buf) - keep :]
        return False

    def _in_reasoning(self, final: bool, out: list[Event]) -> bool:
        assert self.dialect.reasoning is not None
        close = self.dialect.reasoning[1]
        at = self._buf.find(close)
        if at >= 0:
            self._think(self._buf[:at], out)
            self._thought.cut()
            self._buf = self._buf[at + len(close) :]
            self._mode = "content"
            self._content.lead = True
            return True
        keep = 0 if final else marker_tail(self._buf, [close])
        self._think(self._buf[: len(self._buf) - keep], out)
        self._buf = self._buf[len(self._buf) - keep :]
        return False

    def _in_region(self, final: bool, out: list[Event]) -> bool:
        assert self._region is not None
        st = self._region.step(self._buf, final)
        self._emit(st.events, out)
        if st.done_at is None and final:
            st.done_at = len(self._buf)
        if st.done_at is None:
            return False
        if st.reject:
            # Not a call of ours: the marker and what followed it are text after all.
            self._say(self._opener + self._buf[: st.done_at], out)
            self._started = True
        else:
            self._content.lead = True
        self._buf = self._buf[st.done_at :]
        self._mode, self._region = "content", None
        return True

    def _emit(self, events: list[Event], out: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, CallStart):
                out.append(CallStart(self._calls, ev.id or self._new_id(), ev.name))
                self._calls += 1
            elif isinstance(ev, CallArgs):
                out.append(replace(ev, index=self._calls - 1))
            elif isinstance(ev, CallEnd):
                out.append(CallEnd(self._calls - 1))


# ── harmony (gpt-oss): channels instead of tags ────────────────────────────────────────────────

H_START, H_CHANNEL, H_MESSAGE, H_CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>"
H_END, H_CALL, H_RETURN = "<|end|>", "<|call|>", "<|return|>"
_H_ENDS = (H_END, H_CALL, H_RETURN)  # <|call|> and <|return|> end generation, so rarely reach us
_H_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_H_RECIPIENT = re.compile(r"to=([^\s<]+)")


class HarmonyParser(_Parser):
    """Reads gpt-oss's harmony messages: `analysis` is reasoning, `final` (and commentary without
    a recipient) is content, and `commentary to=functions.NAME` is a call whose message is its
    JSON arguments. An answer that does not start with a harmony header is plain content."""

    def __init__(
        self, dialect: Dialect, schemas: Schemas, *, new_id: Callable[[], str] | None = None
    ) -> None:
        super().__init__(dialect, schemas, new_id)
        self._mode = "header"  # header | body | plain
        self._route = "content"  # where the current message's body goes: content | reasoning | call

    def _run(self, final: bool) -> list[Event]:
        out: list[Event] = []
        while True:
            if self._mode == "plain":
                if self._buf:
                    out.append(Content(self._buf))
                self._buf = ""
                return out
            if self._mode == "header":
                at = self._buf.find(H_MESSAGE)
                if at < 0:
                    head = self._buf.lstrip()
                    if any(head.startswith(m) or m.startswith(head) for m in (H_START, H_CHANNEL, "to=")):
                        if final:
                            self._buf = ""  # a header the answer ended in: nothing to say
                        return out
                    self._mode = "plain"
                    continue
                self._open(self._buf[:at], out)
                self._buf = self._buf[at + len(H_MESSAGE) :]
                self._mode = "body"
            found = [(self._buf.find(m), m) for m in _H_ENDS if m in self._buf]
            at, marker = min(found, default=(-1, ""))
            cut = (
                at
                if at >= 0
                else len(self._buf)
                if final
                else len(self._buf) - marker_tail(self._buf, _H_ENDS)
            )
            self._body(self._buf[:cut], out)
            if at < 0:
                self._buf = self._buf[cut:]
                if final and self._route == "call":
                    out.append(CallEnd(self._calls - 1))
                return out
            if self._route == "call":
                out.append(CallEnd(self._calls - 1))
            self._buf = self._buf[at + len(marker) :]
            self._mode, self._route = "header", "content"

    def _open(self, header: str, out: list[Event]) -> None:
        channel = _H_CHANNEL.search(header)
        recipient = _H_RECIPIENT.search(header)
        name = recipient.group(1).removeprefix("functions.") if recipient else None
        if (
            name is not None
            and recipient is not None
            and recipient.group(1).startswith("functions.")
            and name in self.schemas
        ):
            self._route = "call"
            out.append(CallStart(self._calls, self._new_id(), name))
            self._calls += 1
        elif channel is not None and channel.group(1) == "analysis":
            self._route = "reasoning"
        else:
            self._route = "content"

    def _body(self, text: str, out: list[Event]) -> None:
        if not text:
            return
        if self._route == "call":
            out.append(CallArgs(self._calls - 1, text))
        elif self._route == "reasoning":
            out.append(Reasoning(text))
        else:
            out.append(Content(text))


Parser = OutputParser | HarmonyParser


def make_parser(
    dialect: Dialect, schemas: Schemas, *, in_reasoning: bool = False, new_id: Callable[[], str] | None = None
) -> Parser:
    """A fresh parser for one answer in `dialect`."""
    if dialect.harmony:
        return HarmonyParser(dialect, schemas, new_id=new_id)
    return OutputParser(dialect, schemas, in_reasoning=in_reasoning, new_id=new_id)


def parse_answer(
    dialect: Dialect, text: str, schemas: Schemas, *, in_reasoning: bool = False,
    new_id: Callable[[], str] | None = None,
) -> Parsed:  # fmt: skip
    """A whole answer, read as its stream would be."""
    parser = make_parser(dialect, schemas, in_reasoning=in_reasoning, new_id=new_id)
    return collect_events([*parser.feed(text), *parser.finish()])


# ── how each family writes calls (prompts of templates that cannot list tools) ────────────────

CallSpec = tuple[str, dict[str, Any]]  # (name, arguments)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _bare(value: Any) -> str:
    """An argument value as the XML-ish families write it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else _dumps(value)


def _write_hermes(calls: Sequence[CallSpec]) -> str:
    return "\n".join(
        f'<tool_call>\n{{"name": {_dumps(n)}, "arguments": {_dumps(a)}}}\n</tool_call>' for n, a in calls
    )


def _write_qwen3_coder(calls: Sequence[CallSpec]) -> str:
    def one(name: str, args: dict[str, Any]) -> str:
        params = "".join(f"<parameter={k}>\n{_bare(v)}\n</parameter>\n" for k, v in args.items())
        return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"

    return "\n".join(one(n, a) for n, a in calls)


def _write_glm(calls: Sequence[CallSpec]) -> str:
    def one(name: str, args: dict[str, Any]) -> str:
        pairs = "".join(
            f"<arg_key>{k}</arg_key>\n<arg_value>{_bare(v)}</arg_value>\n" for k, v in args.items()
        )
        return f"<tool_call>{name}\n{pairs}</tool_call>"

    return "\n".join(one(n, a) for n, a in calls)


def _write_harmony(calls: Sequence[CallSpec]) -> str:
    return "".join(
        f"{H_START}assistant{H_CHANNEL}commentary to=functions.{n} {H_CONSTRAIN}json{H_MESSAGE}{_dumps(a)}{H_CALL}"
        for n, a in calls
    ).removeprefix(f"{H_START}assistant")


def _write_deepseek_r1(calls: Sequence[CallSpec]) -> str:
    body = "\n".join(
        f"{DS_CALL_BEGIN}function{DS_SEP}{n}\n```json\n{_dumps(a)}\n```{DS_CALL_END}" for n, a in calls
    )
    return f"{DS_CALLS_BEGIN}{body}{DS_CALLS_END}"


def _write_deepseek_v31(calls: Sequence[CallSpec]) -> str:
    body = "".join(f"{DS_CALL_BEGIN}{n}{DS_SEP}{_dumps(a)}{DS_CALL_END}" for n, a in calls)
    return f"{DS_CALLS_BEGIN}{body}{DS_CALLS_END}"


def _write_kimi(calls: Sequence[CallSpec]) -> str:
    body = "".join(
        f"{KIMI_CALL_BEGIN}functions.{n}:{k}{KIMI_ARGS}{_dumps(a)}{KIMI_CALL_END}"
        for k, (n, a) in enumerate(calls)
    )
    return f"{KIMI_SECTION_BEGIN}{body}{KIMI_SECTION_END}"


def _write_llama3(calls: Sequence[CallSpec]) -> str:
    return "; ".join(_dumps({"name": n, "parameters": a}) for n, a in calls)


def _write_mistral(calls: Sequence[CallSpec]) -> str:
    return MISTRAL_CALLS + _dumps([{"name": n, "arguments": a} for n, a in calls])


def _write_mistral_args(calls: Sequence[CallSpec]) -> str:
    return "".join(f"{MISTRAL_CALLS}{n}[ARGS]{_dumps(a)}" for n, a in calls)


def _write_json(calls: Sequence[CallSpec]) -> str:
    """The fallback prompt's own answer shape (see `_chat.fallback_tool_prompt`)."""
    objs = [{"name": n, "arguments": a} for n, a in calls]
    return _dumps(objs[0] if len(objs) == 1 else objs)


# ── forced calls: a grammar for one call in the family's own syntax ───────────────────────────


def _lit(text: str) -> str:
    """A GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


def _class_char(c: str) -> str:
    """One character escaped for a GBNF character class."""
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or ("\\" + c if c in "]\\^-[" else c)


def _text_without(close: str) -> str:
    """A GBNF expression for any text that does not contain `close` (whose first character occurs
    only at its start, as in `</parameter>`). GBNF has no lookahead, so after each `<` the text
    spells a growing part of `close` and then leaves it with any other character (never `<`,
    which starts over): `[^<]* ( "<" ( "" | [^/<] [^<]* | "/" ( "" | [^p<] [^<]* | ... ) ) )*`.
    The text may end inside such a part: what follows it (the tag itself) cannot complete it."""
    first = close[0]
    if first in close[1:]:
        raise ValueError(f"{close!r}: its first character recurs in it")
    free = f"[^{_class_char(first)}]*"
    inner = '""'
    for k in range(len(close) - 1, 0, -1):
        leave = f"[^{_class_char(close[k])}{_class_char(first)}] {free}"
        grow = f" | {_lit(close[k])} {inner}" if k + 1 < len(close) else ""
        inner = f'( "" | {leave}{grow} )'
    return f"{free} ( {_lit(first)} {inner} )*"


@dataclass(frozen=True)
class ToolRules:
    """One tool's grammar pieces: its name, the rule for its JSON arguments and, for families that
    write arguments one by one, (key, value rule, required) per parameter."""

    name: str
    args: str
    params: tuple[tuple[str, str, bool], ...]


def _g_hermes(t: ToolRules) -> str:
    return f"{_lit('<tool_call>' + chr(10) + '{' + chr(34) + 'name' + chr(34) + ': ' + _dumps(t.name) + ', ' + chr(34) + 'arguments' + chr(34) + ': ')} {t.args} {_lit('}' + chr(10) + '</tool_call>')}"


def _g_params(t: ToolRules, one: Callable[[str, str], str]) -> str:
    parts = [one(k, v) if required else f"( {one(k, v)} )?" for k, v, required in t.params]
    return " ".join(parts)


def _g_qwen3_coder(t: ToolRules) -> str:
    def one(k: str, v: str) -> str:
        return f"{_lit(f'<parameter={k}>' + chr(10))} {v} {_lit(chr(10) + '</parameter>' + chr(10))}"

    return f"{_lit(f'<tool_call>{chr(10)}<function={t.name}>{chr(10)}')} {_g_params(t, one)} {_lit('</function>' + chr(10) + '</tool_call>')}"


def _g_glm(t: ToolRules) -> str:
    def one(k: str, v: str) -> str:
        return f"{_lit(f'<arg_key>{k}</arg_key>{chr(10)}<arg_value>')} {v} {_lit('</arg_value>' + chr(10))}"

    return f"{_lit(f'<tool_call>{t.name}{chr(10)}')} {_g_params(t, one)} {_lit('</tool_call>')}"


def _g_harmony(t: ToolRules) -> str:
    return f"{_lit(f'{H_CHANNEL}commentary to=functions.{t.name} {H_CONSTRAIN}json{H_MESSAGE}')} {t.args}"


def _g_deepseek_r1(t: ToolRules) -> str:
    head = f"{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}{t.name}\n```json\n"
    return f"{_lit(head)} {t.args} {_lit(chr(10) + '```' + DS_CALL_END + DS_CALLS_END)}"


def _g_deepseek_v31(t: ToolRules) -> str:
    return f"{_lit(f'{DS_CALLS_BEGIN}{DS_CALL_BEGIN}{t.name}{DS_SEP}')} {t.args} {_lit(DS_CALL_END + DS_CALLS_END)}"


def _g_kimi(t: ToolRules) -> str:
    head = f"{KIMI_SECTION_BEGIN}{KIMI_CALL_BEGIN}functions.{t.name}:0{KIMI_ARGS}"
    return f"{_lit(head)} {t.args} {_lit(KIMI_CALL_END + KIMI_SECTION_END)}"


def _g_llama3(t: ToolRules) -> str:
    # Llama 3.x's own call is plain JSON (its template writes and reads `parameters`), so its
    # grammar stays JSON, only with Llama's key.
    return f"{_lit('{' + chr(34) + 'name' + chr(34) + ': ' + _dumps(t.name) + ', ' + chr(34) + 'parameters' + chr(34) + ': ')} {t.args} {_lit('}')}"


def _g_mistral(t: ToolRules) -> str:
    head = MISTRAL_CALLS + '[{"name": ' + _dumps(t.name) + ', "arguments": '
    return f"{_lit(head)} {t.args} {_lit('}]')}"


def _g_mistral_args(t: ToolRules) -> str:
    return f"{_lit(f'{MISTRAL_CALLS}{t.name}[ARGS]')} {t.args}"


# ── the table ──────────────────────────────────────────────────────────────────────────────────


def _mistral_id() -> str:
    """Mistral's templates insist on call ids of nine letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


def _hermes_only(opener: str, schemas: Schemas) -> _Region:
    return _HermesRegion(schemas)


def _fallback_region(opener: str, schemas: Schemas) -> _Region:
    if opener == HERMES_OPEN:
        return _HermesRegion(schemas)
    if opener == MISTRAL_CALLS:
        return _MistralNamedRegion(schemas)
    return _json_objects(schemas)


def _json_objects(schemas: Schemas) -> _Region:
    """Call objects joined by `;` (Llama 3.x), to the end of the answer."""
    return _JsonListRegion(schemas, array=False, sep=";", fallback=_ToEndRegion(schemas, json_calls))


@dataclass(frozen=True)
class Dialect:
    """One family's way of writing calls and reasoning (see the module docstring's table)."""

    name: str
    detect: Callable[[str], bool]  # does a chat template's source name this family's markers?
    openers: tuple[str, ...]  # markers that open a call region in an answer
    region: Callable[[str, Schemas], _Region]  # the region parser, given the opener met
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


_THINK = ("<think>", "</think>")


def _has(*needles: str) -> Callable[[str], bool]:
    return lambda source: all(n in source for n in needles)


HERMES = Dialect(
    "hermes", _has(HERMES_OPEN), (HERMES_OPEN,), _hermes_only, "json", _write_hermes, _g_hermes,
    markers=(HERMES_OPEN, HERMES_CLOSE),
)  # fmt: skip
QWEN3 = replace(HERMES, name="qwen3", detect=_has(HERMES_OPEN, "<think>"), reasoning=_THINK,
                markers=(HERMES_OPEN, HERMES_CLOSE, *_THINK))  # fmt: skip
QWEN3_CODER = Dialect(
    "qwen3-coder", _has("<function=", "<parameter="), (HERMES_OPEN,), lambda o, s: _JsonOrXmlRegion(s), "xml",
    _write_qwen3_coder, _g_qwen3_coder, reasoning=_THINK, markers=(HERMES_OPEN, HERMES_CLOSE, *_THINK),
    value_close="</parameter>",
)  # fmt: skip
GLM = Dialect(
    "glm", _has("<arg_key>", "<arg_value>"), (HERMES_OPEN,), lambda o, s: _glm_region(s), "xml", _write_glm,
    _g_glm, reasoning=_THINK,
    markers=(HERMES_OPEN, HERMES_CLOSE, "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", *_THINK),
    value_close="</arg_value>",
)  # fmt: skip
HARMONY = Dialect(
    "harmony", _has(H_CHANNEL, H_MESSAGE), (), _hermes_only, "json", _write_harmony, _g_harmony,
    markers=(H_START, H_CHANNEL, H_MESSAGE, H_CONSTRAIN, H_END), harmony=True,
)  # fmt: skip
_DS_MARKERS = (DS_CALLS_BEGIN, DS_CALLS_END, DS_CALL_BEGIN, DS_CALL_END, DS_SEP, *_THINK)
DEEPSEEK_R1 = Dialect(
    "deepseek-r1", _has(DS_CALLS_BEGIN, "```json"), (DS_CALLS_BEGIN,), lambda o, s: _deepseek_region(s), "json",
    _write_deepseek_r1, _g_deepseek_r1, reasoning=_THINK, markers=_DS_MARKERS,
)  # fmt: skip
DEEPSEEK_V31 = replace(DEEPSEEK_R1, name="deepseek-v3.1", detect=_has(DS_CALLS_BEGIN), write=_write_deepseek_v31,
                       call_grammar=_g_deepseek_v31)  # fmt: skip
KIMI_K2 = Dialect(
    "kimi-k2", _has(KIMI_SECTION_BEGIN), (KIMI_SECTION_BEGIN,), lambda o, s: _kimi_region(s), "json", _write_kimi,
    _g_kimi, reasoning=_THINK,
    markers=(KIMI_SECTION_BEGIN, KIMI_SECTION_END, KIMI_CALL_BEGIN, KIMI_ARGS, KIMI_CALL_END, *_THINK),
)  # fmt: skip
LLAMA3 = Dialect(
    "llama3", _has("<|start_header_id|>", '"parameters"'), (PYTHON_TAG,), _fallback_region, "json",
    _write_llama3, _g_llama3, markers=(PYTHON_TAG,), json_leads=("{",), json_lead_streams=True,
)  # fmt: skip
MISTRAL_ARGS = Dialect(
    "mistral-args", _has(MISTRAL_CALLS, "[ARGS]"), (MISTRAL_CALLS,), _fallback_region, "json",
    _write_mistral_args, _g_mistral_args, markers=(MISTRAL_CALLS, "[ARGS]", "[CALL_ID]"), new_id=_mistral_id,
)  # fmt: skip
MISTRAL = replace(MISTRAL_ARGS, name="mistral", detect=_has(MISTRAL_CALLS), write=_write_mistral,
                  call_grammar=_g_mistral)  # fmt: skip
FALLBACK = Dialect(
    "fallback", lambda source: True, (HERMES_OPEN, MISTRAL_CALLS, PYTHON_TAG), _fallback_region, "json",
    _write_json, None, markers=(PYTHON_TAG,), json_leads=_JSON_LEADS,
)  # fmt: skip
"""Unknown templates: today's reading (Hermes blocks, Mistral, or an answer that is wholly plain
JSON, which the fallback prompt asks for). Only here is a leading `{`, `[` or ```json fence held
back while streaming: the plain-JSON call has no marker of its own, so such an answer can only be
told from text once it is complete."""

DIALECTS: tuple[Dialect, ...] = (
    HARMONY, KIMI_K2, DEEPSEEK_R1, DEEPSEEK_V31, GLM, QWEN3_CODER, QWEN3, HERMES, MISTRAL_ARGS, MISTRAL, LLAMA3,
)  # fmt: skip
"""Checked in this order: the first whose markers the template names wins (Qwen3-Coder's template
also names `<tool_call>`, so it comes before Hermes; DeepSeek R1's fenced form before V3.1's)."""


def detect_dialect(template_source: str | None) -> Dialect:
    """The family a chat template belongs to, from the markers its source names."""
    if template_source:
        for dialect in DIALECTS:
            if dialect.detect(template_source):
                return dialect
    return FALLBACK


def tool_schemas(tools: Sequence[dict[str, Any]]) -> Schemas:
    """Tool name -> parameters schema, from validated OpenAI `tools`."""
    return {t["function"]["name"]: t["function"].get("parameters") or dict(DEFAULT_PARAMETERS) for t in tools}


def starts_in_reasoning(dialect: Dialect, prompt: str) -> bool:
    """Whether the prompt opened a reasoning block that the answer continues (R1's `<think>\\n`)."""
    return dialect.reasoning is not None and prompt.rstrip().endswith(dialect.reasoning[0])


def forced_call_grammar(
    dialect: Dialect, tools: Sequence[dict[str, Any]], name: str | None, *, in_reasoning: bool
) -> str | None:
    """A GBNF grammar for an answer that is one call, of tool `name` or of any tool, written in the
    dialect's own syntax (after optional reasoning); None where the family keeps plain JSON."""
    if dialect.call_grammar is None:
        return None
    from llama_cpp.llama_grammar import SchemaConverter

    from mesh_llm.serving.engine._grammar import finish_grammar, prepare_schema

    conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    alternatives = []
    for i, (tool_name, params) in enumerate(tool_schemas(tools).items()):
        if name is not None and tool_name != name:
            continue
        schema = conv.resolve_refs(prepare_schema(params), f"tool{i}")
        args = conv.visit(schema, f"args{i}")
        rules: list[tuple[str, str, bool]] = []
        if dialect.arguments == "xml":
            required = set(schema.get("required") or ())
            for j, (key, prop) in enumerate((schema.get("properties") or {}).items()):
                is_text = isinstance(prop, dict) and prop.get("type") == "string" and "enum" not in prop
                value = (
                    "xml-text"
                    if is_text
                    else conv.visit(prop if isinstance(prop, dict) else {}, f"arg{i}-{j}")
                )
                rules.append((key, value, key in required))
        alternatives.append(dialect.call_grammar(ToolRules(tool_name, args, tuple(rules))))
    lines = [f"call ::= {' | '.join(f'( {a} )' for a in alternatives)}"]
    if dialect.value_close:
        lines.append(f"xml-text ::= {_text_without(dialect.value_close)}")
    lines.append("gap ::= [ \\n]{0,4}")
    if dialect.harmony:
        # Reasoning may hold `<` but no `<|`: every harmony marker begins so.
        analysis = f"{_lit(H_CHANNEL + 'analysis' + H_MESSAGE)} {_text_without('<|')} {_lit(H_END + H_START + 'assistant')}"
        lines.append(f"root ::= ( {analysis} )? call")
    elif dialect.reasoning is not None:
        open_tag, close_tag = dialect.reasoning
        lines.append(f"thought ::= {_text_without(close_tag)}")
        if in_reasoning:
            lines.append(f"root ::= thought {_lit(close_tag)} gap call")
        else:
            lines.append(f"root ::= ( gap {_lit(open_tag)} thought {_lit(close_tag)} )? gap call")
    else:
        lines.append("root ::= call")
    return finish_grammar(conv.format_grammar() + "\n" + "\n".join(lines))
