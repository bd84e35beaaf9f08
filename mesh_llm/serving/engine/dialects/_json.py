"""Llama 3.x, Mistral and the fallback: calls written as JSON objects, with no block of their own.

    llama3        {"name": n, "parameters": {...}}  (the whole answer, or after <|python_tag|>)
    mistral       [TOOL_CALLS][{"name": n, "arguments": {...}, "id": ...}]  or  [TOOL_CALLS]n[ARGS]{...}

A call written name first streams its arguments; any other shape is read whole once the answer is
complete (by `_tool_formats`' readers).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Sequence

from mesh_llm.serving.engine._tool_formats import (
    BAD_JSON,
    DECODER,
    MISTRAL_ARGS_TAG,
    MISTRAL_CALL_ID,
    MISTRAL_CALLS,
    Calls,
    call_of,
    json_calls,
    mistral_calls,
    skip_space,
)
from mesh_llm.serving.engine.dialects._base import (
    CALL_END,
    CallSpec,
    Region,
    Schemas,
    Step,
    call_args,
    call_start,
    dumps,
)
from mesh_llm.serving.engine.dialects._events import Event
from mesh_llm.serving.engine.dialects._gbnf import ToolRules, lit
from mesh_llm.serving.engine.dialects._scan import (
    NO,
    WAIT,
    JsonArgs,
    JsonScan,
    could_start,
    expect,
    json_call_head,
)


class _ToEndRegion:
    """Calls that run to the end of the answer, read once it is complete: what the streaming JSON
    readers hand over when the text does not open as they expect."""

    def __init__(self, schemas: Schemas, read: Callable[[str, Schemas], Calls | None]) -> None:
        self.schemas = schemas
        self.read = read

    def step(self, text: str, final: bool) -> Step:
        if not final:
            return Step()
        calls = self.read(text, self.schemas)
        if not calls:
            return Step(done_at=len(text), reject=True)
        events: list[Event] = []
        for name, arguments in calls:
            events += [call_start(name), call_args(arguments), CALL_END]
        return Step(events, done_at=len(text))


class _JsonListRegion:
    """JSON call objects one after another: Mistral's array after `[TOOL_CALLS]` (or one object),
    Llama's objects joined by `;`. A call written name first streams its arguments as they are
    generated; others are read whole once complete. Text that cannot start such a list goes to
    `fallback` (which reads the whole region once the answer is complete)."""

    def __init__(self, schemas: Schemas, *, array: bool, sep: str, fallback: Region) -> None:
        self.schemas = schemas
        self.close = "]" if array else ""
        self.sep = sep
        self.fallback = fallback
        self.given_up = False
        self.phase = "open" if array else "item"  # open | item | args | rest | after
        self.pos = 0
        self.calls = 0
        self.args = JsonArgs(0)
        self.rest = JsonScan(0)

    def step(self, text: str, final: bool) -> Step:
        if self.given_up:
            return self.fallback.step(text, final)
        step = Step()
        while True:
            if self.phase == "open":
                p = expect(text, self.pos, ("[", "{"), final)
                if p == WAIT:
                    return step
                if p == NO:
                    return self._give_up(text, final)
                if text[p - 1] == "{":  # one object, not an array
                    self.close, p = "", p - 1
                self.pos, self.phase = p, "item"
            if self.phase == "item":
                head = json_call_head(text, final, self.pos)
                if head == WAIT:
                    return step
                if isinstance(head, tuple) and head[0] in self.schemas:
                    step.events.append(call_start(head[0]))
                    self.args, self.phase = JsonArgs(head[1]), "args"
                elif self.calls == 0:
                    return self._give_up(text, final)
                elif not self._whole_item(text, final, step):
                    return step
            if self.phase == "args":
                end = self.args.stream(text, final, step.events)
                if end is None:
                    return step
                self.rest, self.phase = JsonScan(end, depth=1), "rest"
            if self.phase == "rest":
                after = self.rest.advance(text, final)
                if after is None:
                    return step
                step.events.append(CALL_END)
                self.calls, self.pos, self.phase = self.calls + 1, after, "after"
            if self.phase == "after":
                p = expect(text, self.pos, (self.sep, self.close) if self.close else (self.sep,), final)
                if p == WAIT:
                    return step
                if p == NO or text[p - 1] == self.close:
                    step.done_at = self.pos if p == NO else p
                    return step
                self.pos, self.phase = p, "item"

    def _whole_item(self, text: str, final: bool, step: Step) -> bool:
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
        step.events += [call_start(call[0]), call_args(call[1]), CALL_END]
        self.calls, self.pos, self.phase = self.calls + 1, end, "after"
        return True

    def _give_up(self, text: str, final: bool) -> Step:
        self.given_up = True
        return self.fallback.step(text, final)


class MistralNamedRegion:
    """After `[TOOL_CALLS]`: `name[ARGS]{...}` (or `name[CALL_ID]id[ARGS]{...}`), the arguments
    streamed as generated, the next call after another `[TOOL_CALLS]`; anything else is read as
    JSON calls (`_JsonListRegion`)."""

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self.inner: Region | None = None
        self.pos = 0
        self.calls = 0
        self.args: JsonArgs | None = None

    def step(self, text: str, final: bool) -> Step:
        if self.inner is None and self.calls == 0 and self.args is None:
            p = skip_space(text, 0)
            if p == len(text) and not final:
                return Step()
            if text.startswith(("[", "{"), p):
                self.inner = _JsonListRegion(
                    self.schemas, array=True, sep=",", fallback=_ToEndRegion(self.schemas, mistral_calls)
                )
        if self.inner is not None:
            return self.inner.step(text, final)
        step = Step()
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
                step.events.append(call_start(name))
                self.args = JsonArgs(start, MISTRAL_CALLS)
            end = self.args.stream(text, final, step.events)
            if end is None:
                return step
            p = skip_space(text, end)
            if not final and could_start(text, p, MISTRAL_CALLS):  # another call may follow
                return step
            step.events.append(CALL_END)
            self.calls += 1
            self.args = None
            if not text.startswith(MISTRAL_CALLS, p):
                step.done_at = end
                return step
            self.pos = p + len(MISTRAL_CALLS)


def json_objects(schemas: Schemas) -> Region:
    """Call objects joined by `;` (Llama 3.x), to the end of the answer."""
    return _JsonListRegion(schemas, array=False, sep=";", fallback=_ToEndRegion(schemas, json_calls))


def mistral_id() -> str:
    """Mistral's templates insist on call ids of nine letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


def write_llama3(calls: Sequence[CallSpec]) -> str:
    return "; ".join(dumps({"name": n, "parameters": a}) for n, a in calls)


def write_mistral(calls: Sequence[CallSpec]) -> str:
    return MISTRAL_CALLS + dumps([{"name": n, "arguments": a} for n, a in calls])


def write_mistral_args(calls: Sequence[CallSpec]) -> str:
    return "".join(f"{MISTRAL_CALLS}{n}[ARGS]{dumps(a)}" for n, a in calls)


def write_json(calls: Sequence[CallSpec]) -> str:
    """The fallback prompt's own answer shape (see the engine's `_tool_fallback.fallback_tool_prompt`)."""
    objs = [{"name": n, "arguments": a} for n, a in calls]
    return dumps(objs[0] if len(objs) == 1 else objs)


def grammar_llama3(t: ToolRules) -> str:
    # Llama 3.x's own call is plain JSON (its template writes and reads `parameters`), so its
    # grammar stays JSON, only with Llama's key.
    return f"{lit('{' + chr(34) + 'name' + chr(34) + ': ' + dumps(t.name) + ', ' + chr(34) + 'parameters' + chr(34) + ': ')} {t.args} {lit('}')}"


def grammar_mistral(t: ToolRules) -> str:
    head = MISTRAL_CALLS + '[{"name": ' + dumps(t.name) + ', "arguments": '
    return f"{lit(head)} {t.args} {lit('}]')}"


def grammar_mistral_args(t: ToolRules) -> str:
    return f"{lit(f'{MISTRAL_CALLS}{t.name}[ARGS]')} {t.args}"
