"""Tool calling without model code: tool definitions, tool_choice and forced calls.

request `tools` ──validate_tools──▶ tool dicts ──▶ ChatTemplate.render (the prompt)
request `tool_choice` ──resolve_tool_choice──▶ ToolChoice
     required / named ──forced_call_schema──▶ JSON schema ──▶ grammar (the engine's job)
generated text ──▶ content, reasoning and calls (`dialects`, one parser per model family)
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""What a function name may look like (OpenAI's rule, plus `.` as llama.cpp allows)."""

DEFAULT_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
"""The parameters schema of a function that declares none: it takes no arguments."""


class ToolError(ValueError):
    """A `tools` or `tool_choice` request field that cannot be used; `param` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


ChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolChoice:
    """What the request lets or makes the model do with its tools; `name` is set in `named` mode."""

    mode: ChoiceMode
    name: str | None = None

    @property
    def forced(self) -> bool:
        """Whether the answer must be a call (a grammar enforces it)."""
        return self.mode in ("required", "named")


def new_call_id() -> str:
    """A fresh tool call id: `call_` and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


# ── request fields ─────────────────────────────────────────────────────────────────────────────


def validate_tools(tools: object) -> list[dict[str, Any]]:
    """Validate an OpenAI `tools` array and return it normalized.

    Each tool comes back as `{"type": "function", "function": {"name", "description"?,
    "parameters", "strict"?}}`, with `parameters` defaulted to a schema of no arguments and unknown
    keys dropped. None (the field left out) and an empty array both mean no tools. Raises
    `ToolError`.
    """
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ToolError("'tools' must be an array of tool objects", "tools")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ToolError(f"{where} must be an object", where)
        if tool.get("type") != "function":
            raise ToolError(f"{where}.type must be 'function'; got {tool.get('type')!r}", f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ToolError(f"{where}.function must be an object", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ToolError(
                f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-'; got {name!r}",
                f"{where}.function.name",
            )
        if name in seen:
            raise ToolError(f"{where}.function.name {name!r} is defined twice", f"{where}.function.name")
        seen.add(name)
        spec: dict[str, Any] = {"name": name}
        description = fn.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise ToolError(
                    f"{where}.function.description must be a string", f"{where}.function.description"
                )
            spec["description"] = description
        spec["parameters"] = _parameters(fn.get("parameters"), f"{where}.function.parameters")
        strict = fn.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise ToolError(f"{where}.function.strict must be a boolean", f"{where}.function.strict")
            spec["strict"] = strict
        out.append({"type": "function", "function": spec})
    return out


def _parameters(schema: object, where: str) -> dict[str, Any]:
    if schema is None or schema == {}:
        return dict(DEFAULT_PARAMETERS)
    if not isinstance(schema, dict):
        raise ToolError(f"{where} must be a JSON schema object", where)
    if schema.get("type", "object") != "object":
        raise ToolError(f"{where} must describe an object (type 'object'); got {schema.get('type')!r}", where)
    return schema


def resolve_tool_choice(tool_choice: object, tools: list[dict[str, Any]]) -> ToolChoice:
    """Read OpenAI's `tool_choice` against the validated `tools`.

    Left out, it is `auto` when there are tools and `none` when there are none. `required` and a
    named function (`{"type": "function", "function": {"name": ...}}`) need tools, and the name
    must be one of them. Raises `ToolError`.
    """
    names = [tool["function"]["name"] for tool in tools]
    if tool_choice is None:
        return ToolChoice("auto" if tools else "none")
    if tool_choice == "none":
        return ToolChoice("none")
    if tool_choice == "auto":
        # With nothing to call, auto can only answer in text.
        return ToolChoice("auto" if tools else "none")
    if tool_choice == "required":
        if not tools:
            raise ToolError("tool_choice 'required' needs a non-empty 'tools' array", "tool_choice")
        return ToolChoice("required")
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise ToolError(
                "tool_choice must be 'none', 'auto', 'required' or "
                '{"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        if name not in names:
            listed = ", ".join(repr(n) for n in names) or "none"
            raise ToolError(
                f"tool_choice names function {name!r}, which is not in 'tools' (listed: {listed})",
                "tool_choice.function.name",
            )
        return ToolChoice("named", name)
    raise ToolError(
        f"tool_choice must be 'none', 'auto', 'required' or a function object; got {tool_choice!r}",
        "tool_choice",
    )


def forced_call_schema(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """A JSON schema for an answer that is exactly one call: of tool `name`, or of any tool.

    The answer is `{"name": <const>, "arguments": <that tool's parameters>}`, `name` first. Only
    schema features llama.cpp's JSON-schema-to-grammar converter reads are used (`type`,
    `properties`, `required`, `additionalProperties: false`, `const`, `anyOf`).
    """
    by_name = {tool["function"]["name"]: tool["function"] for tool in tools}
    if name is not None:
        if name not in by_name:
            raise ToolError(f"function {name!r} is not in 'tools'", "tool_choice.function.name")
        return _call_schema(by_name[name])
    if not by_name:
        raise ToolError("a forced tool call needs a non-empty 'tools' array", "tools")
    if len(by_name) == 1:
        return _call_schema(next(iter(by_name.values())))
    return {"anyOf": [_call_schema(fn) for fn in by_name.values()]}


def _call_schema(fn: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": fn["name"]},
            "arguments": fn.get("parameters") or dict(DEFAULT_PARAMETERS),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
