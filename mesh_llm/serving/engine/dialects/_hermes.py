"""Hermes and Qwen3: one JSON object `{"name", "arguments"}` in a `<tool_call>` block.

Also the block Qwen3-Coder's smaller models write, and one the fallback reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh_llm.serving.engine._tool_formats import BAD_JSON, DECODER, call_of, skip_space
from mesh_llm.serving.engine.dialects._base import (
    CALL_END,
    CallSpec,
    Schemas,
    Step,
    call_args,
    call_start,
    dumps,
)
from mesh_llm.serving.engine.dialects._gbnf import ToolRules, lit
from mesh_llm.serving.engine.dialects._scan import WAIT, JsonArgs, JsonScan, could_start, json_call_head

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


class HermesRegion:
    """After `<tool_call>`: one JSON object `{"name", "arguments"}` and `</tool_call>`.

    Written name first, the arguments stream as they are generated, up to the brace that closes
    them; any other shape (arguments first, the OpenAI shape, arguments as a string) is read once
    the object is complete and sent as one piece."""

    def __init__(self, schemas: Schemas) -> None:
        self.names = schemas
        self.whole = False  # the call is read once complete
        self.args: JsonArgs | None = None
        self.rest: JsonScan | None = None  # the call object after its arguments

    def step(self, text: str, final: bool) -> Step:
        step = Step()
        if self.args is None and not self.whole:
            head = json_call_head(text, final)
            if head == WAIT:
                return step
            if not isinstance(head, tuple) or head[0] not in self.names:
                self.whole = True
            else:
                step.events.append(call_start(head[0]))
                self.args = JsonArgs(head[1], HERMES_CLOSE)
        if self.args is None:
            return self._whole(text, final)
        if self.rest is None:
            end = self.args.stream(text, final, step.events)
            if end is None:
                return step
            self.rest = JsonScan(end, HERMES_CLOSE, depth=1)
            if text.startswith(HERMES_CLOSE, end):  # the arguments were cut off by the close tag
                self.rest.pos, self.rest.depth = end, 0
        after = self.rest.advance(text, final) if self.rest.depth > 0 else self.rest.pos
        if after is None:
            return step
        p = skip_space(text, after)
        if text.startswith(HERMES_CLOSE, p):
            p += len(HERMES_CLOSE)
        elif not final and could_start(text, p, HERMES_CLOSE):
            return step
        else:  # the close tag never came: the call ends with its object
            p = after
        step.events.append(CALL_END)
        step.done_at = p
        return step

    def _whole(self, text: str, final: bool) -> Step:
        close = text.find(HERMES_CLOSE)
        start = skip_space(text, 0)
        try:
            value, after = DECODER.raw_decode(text, start)
        except BAD_JSON:
            if close >= 0:
                return Step(done_at=close + len(HERMES_CLOSE), reject=True)
            return Step(done_at=len(text), reject=True) if final else Step()
        after = skip_space(text, after)
        if text.startswith(HERMES_CLOSE, after):
            end = after + len(HERMES_CLOSE)
        elif not final and could_start(text, after, HERMES_CLOSE):
            return Step()
        elif after == len(text) or text.startswith(HERMES_OPEN, after):  # the close tag never came
            end = after
        else:
            return Step(done_at=close + len(HERMES_CLOSE) if close >= 0 else len(text), reject=True)
        call = call_of(value, self.names)
        if call is None:
            return Step(done_at=end, reject=True)
        return Step([call_start(call[0]), call_args(call[1]), CALL_END], done_at=end)


def write_hermes(calls: Sequence[CallSpec]) -> str:
    return "\n".join(
        f'<tool_call>\n{{"name": {dumps(n)}, "arguments": {dumps(a)}}}\n</tool_call>' for n, a in calls
    )


def grammar_hermes(t: ToolRules) -> str:
    return f"{lit('<tool_call>' + chr(10) + '{' + chr(34) + 'name' + chr(34) + ': ' + dumps(t.name) + ', ' + chr(34) + 'arguments' + chr(34) + ': ')} {t.args} {lit('}' + chr(10) + '</tool_call>')}"
