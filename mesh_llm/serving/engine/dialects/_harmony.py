"""Harmony (gpt-oss): channels instead of tags, read by a parser of its own.

    <|channel|>analysis<|message|>…<|end|>                                  reasoning
    <|channel|>commentary to=functions.n <|constrain|>json<|message|>{...}   a call
    <|channel|>final<|message|>…                                             content

An answer that does not start with a harmony header is plain content.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mesh_llm.serving.engine.dialects._base import BaseParser, CallSpec, Dialect, Schemas, dumps
from mesh_llm.serving.engine.dialects._events import CallArgs, CallEnd, CallStart, Content, Event, Reasoning
from mesh_llm.serving.engine.dialects._gbnf import ToolRules, lit
from mesh_llm.serving.engine.dialects._scan import marker_tail

H_START, H_CHANNEL, H_MESSAGE, H_CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>"
H_END, H_CALL, H_RETURN = "<|end|>", "<|call|>", "<|return|>"
_H_ENDS = (H_END, H_CALL, H_RETURN)  # <|call|> and <|return|> end generation, so rarely reach us
_H_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_H_RECIPIENT = re.compile(r"to=([^\s<]+)")


class HarmonyParser(BaseParser):
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


def write_harmony(calls: Sequence[CallSpec]) -> str:
    return "".join(
        f"{H_START}assistant{H_CHANNEL}commentary to=functions.{n} {H_CONSTRAIN}json{H_MESSAGE}{dumps(a)}{H_CALL}"
        for n, a in calls
    ).removeprefix(f"{H_START}assistant")


def grammar_harmony(t: ToolRules) -> str:
    return f"{lit(f'{H_CHANNEL}commentary to=functions.{t.name} {H_CONSTRAIN}json{H_MESSAGE}')} {t.args}"
