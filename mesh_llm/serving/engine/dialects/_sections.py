"""DeepSeek and Kimi K2: a section of calls between two markers, each call marked on its own.

    deepseek-r1   <|tool▁calls▁begin|><|tool▁call▁begin|>function<|tool▁sep|>n\n```json\n{...}\n```<|tool▁call▁end|>…
    deepseek-v3.1 <|tool▁calls▁begin|><|tool▁call▁begin|>n<|tool▁sep|>{...}<|tool▁call▁end|>…
    kimi-k2       <|tool_calls_section_begin|><|tool_call_begin|>functions.n:0<|tool_call_argument_begin|>{...}…

DeepSeek's bars are U+FF5C, the fullwidth vertical line, written here as ASCII bars.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh_llm.serving.engine._tool_formats import skip_space
from mesh_llm.serving.engine.dialects._base import (
    CALL_END,
    CallSpec,
    Region,
    Schemas,
    Step,
    call_start,
    dumps,
)
from mesh_llm.serving.engine.dialects._gbnf import ToolRules, lit
from mesh_llm.serving.engine.dialects._scan import ArgsStream, could_start


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
        self.args = ArgsStream(0, call_end)

    def step(self, text: str, final: bool) -> Step:
        step = Step()
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
                elif not final and could_start(text, p, self.call_end):
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
                step.events.append(call_start(head.name, head.call_id))
                self.args = ArgsStream(sep + len(self.sep) + head.args_at, head.args_end or self.call_end)
                self.phase = "args"
                continue
            if not final and (
                could_start(text, p, self.section_end) or could_start(text, p, self.call_begin)
            ):
                return step
            return self._stop(step, text, p)

    def _close(self, step: Step) -> None:
        step.events.append(CALL_END)
        self.n_calls += 1
        self.phase = "between"

    def _stop(self, step: Step, text: str, p: int) -> Step:
        """What follows is no call: before any call, the whole section is text; after one, the
        section ends here."""
        if self.n_calls == 0:
            end = text.find(self.section_end, p)
            return Step(done_at=end + len(self.section_end) if end >= 0 else len(text), reject=True)
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


def deepseek_region(schemas: Schemas) -> Region:
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


def kimi_region(schemas: Schemas) -> Region:
    return _SectionRegion(
        schemas, section_end=KIMI_SECTION_END, call_begin=KIMI_CALL_BEGIN, sep=KIMI_ARGS, call_end=KIMI_CALL_END,
        read_head=_kimi_head,
    )  # fmt: skip


def write_deepseek_r1(calls: Sequence[CallSpec]) -> str:
    body = "\n".join(
        f"{DS_CALL_BEGIN}function{DS_SEP}{n}\n```json\n{dumps(a)}\n```{DS_CALL_END}" for n, a in calls
    )
    return f"{DS_CALLS_BEGIN}{body}{DS_CALLS_END}"


def write_deepseek_v31(calls: Sequence[CallSpec]) -> str:
    body = "".join(f"{DS_CALL_BEGIN}{n}{DS_SEP}{dumps(a)}{DS_CALL_END}" for n, a in calls)
    return f"{DS_CALLS_BEGIN}{body}{DS_CALLS_END}"


def write_kimi(calls: Sequence[CallSpec]) -> str:
    body = "".join(
        f"{KIMI_CALL_BEGIN}functions.{n}:{k}{KIMI_ARGS}{dumps(a)}{KIMI_CALL_END}"
        for k, (n, a) in enumerate(calls)
    )
    return f"{KIMI_SECTION_BEGIN}{body}{KIMI_SECTION_END}"


def grammar_deepseek_r1(t: ToolRules) -> str:
    head = f"{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}{t.name}\n```json\n"
    return f"{lit(head)} {t.args} {lit(chr(10) + '```' + DS_CALL_END + DS_CALLS_END)}"


def grammar_deepseek_v31(t: ToolRules) -> str:
    return f"{lit(f'{DS_CALLS_BEGIN}{DS_CALL_BEGIN}{t.name}{DS_SEP}')} {t.args} {lit(DS_CALL_END + DS_CALLS_END)}"


def grammar_kimi(t: ToolRules) -> str:
    head = f"{KIMI_SECTION_BEGIN}{KIMI_CALL_BEGIN}functions.{t.name}:0{KIMI_ARGS}"
    return f"{lit(head)} {t.args} {lit(KIMI_CALL_END + KIMI_SECTION_END)}"
