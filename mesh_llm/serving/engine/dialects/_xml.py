"""Qwen3-Coder and GLM: arguments written one by one as tagged text inside `<tool_call>`.

    qwen3-coder   <tool_call><function=n><parameter=k>v</parameter></function></tool_call>
    glm           <tool_call>n<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>

A string parameter's value is its bare text; the arguments stream as JSON, one at a time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from mesh_llm.serving.engine._tool_formats import BAD_JSON, skip_space
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
from mesh_llm.serving.engine.dialects._events import CallArgs
from mesh_llm.serving.engine.dialects._gbnf import ToolRules, lit
from mesh_llm.serving.engine.dialects._hermes import HERMES_CLOSE, HermesRegion
from mesh_llm.serving.engine.dialects._scan import could_start


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

    def step(self, text: str, final: bool) -> Step:
        step = Step()
        if self.name is None:
            m = self.head.match(text)
            block_end = text.find(self.block_end)
            rejected = Step(done_at=block_end + len(self.block_end), reject=True) if block_end >= 0 else None
            if m is None or m.group(1).strip() not in self.schemas:
                if rejected is None and (final or m is not None):
                    rejected = Step(done_at=len(text), reject=True) if final else Step()
                return rejected or Step()
            name = m.group(1).strip()
            self.name = name
            self.pos = m.end()
            step.events.append(call_start(name))
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
            elif not final and (p == len(text) or could_start(text, p, self.key_open)
                                or could_start(text, p, self.call_close)):  # fmt: skip
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
        elif not final and could_start(text, p, self.region_close):
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
        return call_args(f"{lead}{json.dumps(key, ensure_ascii=False)}: {value}")

    def _close(self, step: Step) -> None:
        step.events.append(call_args("}" if self.n_args else "{}"))
        step.events.append(CALL_END)
        self.call_done = True


def _qwen3_coder_region(schemas: Schemas) -> Region:
    return _XmlRegion(
        schemas, re.compile(r"\s*<function=([^>\n]*)>"), "<parameter=", ">", "", "</parameter>",
        "</function>", HERMES_CLOSE, strip_newlines=True,
    )  # fmt: skip


def glm_region(schemas: Schemas) -> Region:
    return _XmlRegion(
        schemas, re.compile(r"\s*([^<\n]+?)\s*(?=<|\n)"), "<arg_key>", "</arg_key>", "<arg_value>",
        "</arg_value>", HERMES_CLOSE, "", strip_newlines=False,
    )  # fmt: skip


class JsonOrXmlRegion:
    """Qwen3-Coder's block: its own XML calls, or the Hermes JSON its smaller models also write."""

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self.inner: Region | None = None

    def step(self, text: str, final: bool) -> Step:
        if self.inner is None:
            p = skip_space(text, 0)
            if p == len(text) and not final:
                return Step()
            json_body = text.startswith("{", p)
            self.inner = HermesRegion(self.schemas) if json_body else _qwen3_coder_region(self.schemas)
        return self.inner.step(text, final)


def _bare(value: Any) -> str:
    """An argument value as the XML-ish families write it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else dumps(value)


def write_qwen3_coder(calls: Sequence[CallSpec]) -> str:
    def one(name: str, args: dict[str, Any]) -> str:
        params = "".join(f"<parameter={k}>\n{_bare(v)}\n</parameter>\n" for k, v in args.items())
        return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"

    return "\n".join(one(n, a) for n, a in calls)


def write_glm(calls: Sequence[CallSpec]) -> str:
    def one(name: str, args: dict[str, Any]) -> str:
        pairs = "".join(
            f"<arg_key>{k}</arg_key>\n<arg_value>{_bare(v)}</arg_value>\n" for k, v in args.items()
        )
        return f"<tool_call>{name}\n{pairs}</tool_call>"

    return "\n".join(one(n, a) for n, a in calls)


def _g_params(t: ToolRules, one: Callable[[str, str], str]) -> str:
    parts = [one(k, v) if required else f"( {one(k, v)} )?" for k, v, required in t.params]
    return " ".join(parts)


def grammar_qwen3_coder(t: ToolRules) -> str:
    def one(k: str, v: str) -> str:
        return f"{lit(f'<parameter={k}>' + chr(10))} {v} {lit(chr(10) + '</parameter>' + chr(10))}"

    return f"{lit(f'<tool_call>{chr(10)}<function={t.name}>{chr(10)}')} {_g_params(t, one)} {lit('</function>' + chr(10) + '</tool_call>')}"


def grammar_glm(t: ToolRules) -> str:
    def one(k: str, v: str) -> str:
        return f"{lit(f'<arg_key>{k}</arg_key>{chr(10)}<arg_value>')} {v} {lit('</arg_value>' + chr(10))}"

    return f"{lit(f'<tool_call>{t.name}{chr(10)}')} {_g_params(t, one)} {lit('</tool_call>')}"
