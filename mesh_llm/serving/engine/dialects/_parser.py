"""The answer parser of every tagged dialect: content, reasoning and call regions.

Only text that can begin one of the dialect's own markers is held back; at a call marker the
family's region parser (its table entry's `region`) reads on until the region ends. Harmony's
answers have a parser of their own (`_harmony`); `make_parser` picks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from mesh_llm.serving.engine._tool_formats import whole_json
from mesh_llm.serving.engine.dialects._base import (
    CALL_END,
    BaseParser,
    Dialect,
    Region,
    Schemas,
    call_args,
    call_start,
)
from mesh_llm.serving.engine.dialects._events import (
    CallArgs,
    CallEnd,
    CallStart,
    Content,
    Event,
    Parsed,
    Reasoning,
    collect_events,
)
from mesh_llm.serving.engine.dialects._harmony import HarmonyParser
from mesh_llm.serving.engine.dialects._json import json_objects
from mesh_llm.serving.engine.dialects._scan import WAIT, json_call_head, marker_tail


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


class OutputParser(BaseParser):
    """Reads one chat answer in a dialect as it is generated; see the package docstring.

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
        self._region: Region | None = None
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
                    call = json_call_head(buf, final, len(buf) - len(head))
                    if call == WAIT:
                        return False
                    if isinstance(call, tuple) and call[0] in self.schemas:  # a call, written name first
                        self._json_lead = ()
                        self._mode, self._opener = "region", ""
                        self._region = json_objects(self.schemas)
                        return True
                if not final:
                    return False  # the whole answer may be one call: it is read when complete
                found = whole_json(buf, self.schemas)
                if found is not None:
                    for name, arguments in found:
                        self._emit([call_start(name), call_args(arguments), CALL_END], out)
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
