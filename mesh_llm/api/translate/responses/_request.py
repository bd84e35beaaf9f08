"""A Responses request checked and translated into one chat body."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from mesh_llm.api.translate import IdFactory, random_id
from mesh_llm.api.translate.responses._answer import ResponsesTurn
from mesh_llm.api.translate.responses._input import bad, input_messages
from mesh_llm.api.translate.responses._store import MAX_AGE_S, MAX_STORED, Message, ResponseStore
from mesh_llm.http_errors import ApiError

_TOOL_CHOICES = ("auto", "none", "required")
_DEFAULT_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ResponsesTranslator:
    """The Responses API as a `Translator`: owns the store behind `previous_response_id`.

    The defaults (random ids, the wall clock) are the node's; tests pass their own.
    """

    def __init__(
        self,
        new_id: IdFactory = random_id,
        now: Callable[[], float] = time.time,
        *,
        max_stored: int = MAX_STORED,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self._new_id = new_id
        self._now = now
        self.store = ResponseStore(max_stored, max_age_s, now)

    def error_body(self, error: ApiError) -> dict[str, Any]:
        """Responses errors are OpenAI's usual error object."""
        return error.body()

    def begin(self, body: dict[str, Any]) -> ResponsesTurn:
        """Check a Responses request and translate it to one chat body. Raises `ApiErrorResponse`."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad("'model' must be a non-empty string", "model", "invalid_request")
        stream = _flag(body, "stream", False)
        store = _flag(body, "store", True)
        parallel = _flag(body, "parallel_tool_calls", True)
        instructions = _optional(body, "instructions", str, "a string")
        previous = _optional(body, "previous_response_id", str, "a string")
        history = self._chain(previous) if previous is not None else []
        messages = input_messages(body.get("input"), history)
        tools, chat_tools = _tools(body.get("tools"))
        tool_choice, chat_tool_choice = _tool_choice(body.get("tool_choice"), tools)
        text, response_format = _text(body.get("text"))
        reasoning = _optional(body, "reasoning", dict, "an object")
        metadata = _optional(body, "metadata", dict, "an object")
        user = _optional(body, "user", str, "a string")
        max_output = _optional(body, "max_output_tokens", int, "an integer")
        if max_output is not None and max_output < 1:
            raise bad("'max_output_tokens' must be at least 1", "max_output_tokens")
        temperature = _number(body, "temperature")
        top_p = _number(body, "top_p")

        conversation = history + messages
        chat: dict[str, Any] = {"model": model, "messages": copy.deepcopy(conversation), "stream": stream}
        if instructions:
            chat["messages"].insert(0, {"role": "system", "content": instructions})
        if stream:
            chat["stream_options"] = {"include_usage": True}
        if chat_tools:
            chat["tools"] = chat_tools
            chat["parallel_tool_calls"] = parallel
        if chat_tool_choice is not None:
            chat["tool_choice"] = chat_tool_choice
        if response_format is not None:
            chat["response_format"] = response_format
        if max_output is not None:
            chat["max_tokens"] = max_output
        for key, value in (("temperature", temperature), ("top_p", top_p), ("seed", body.get("seed"))):
            if value is not None:
                chat[key] = value
        echo = {
            "instructions": instructions,
            "tools": tools,
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel,
            "temperature": temperature,
            "top_p": top_p,
            "text": text,
            "reasoning": reasoning,
            "max_output_tokens": max_output,
            "previous_response_id": previous,
            "store": store,
            "metadata": metadata if metadata is not None else {},
            "user": user,
            "truncation": "disabled",
        }
        return ResponsesTurn(
            chat=chat,
            response_id=self._new_id("resp_"),
            created_at=int(self._now()),
            model=model,
            echo=echo,
            conversation=conversation,
            keep=self.store if store else None,
            new_id=self._new_id,
            now=self._now,
        )

    def _chain(self, response_id: str) -> list[Message]:
        chain = self.store.conversation(response_id)
        if chain is None:
            raise bad(
                f"Previous response with id '{response_id}' not found. Responses are kept by the "
                "node that answered them, in memory, for a limited time, and only with 'store' true.",
                "previous_response_id",
                "previous_response_not_found",
            )
        return chain


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{key}' must be a boolean", key)
    return value


def _optional(body: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    # bool is an int to Python, never to a JSON schema
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise bad(f"'{key}' must be {what}", key)
    return value


def _number(body: dict[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise bad(f"'{key}' must be a number", key)
    return value


def _tools(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The function tools as echoed in a Response, and as chat tools."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise bad("'tools' must be an array", "tools")
    echoed: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    hosted: list[tuple[int, object]] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad(f"{where} must be an object", where)
        if tool.get("type") != "function":
            hosted.append((i, tool.get("type")))
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            hint = (
                " (Responses function tools are flat: {type, name, description, parameters}, not "
                "chat's {type, function: {...}})"
                if "function" in tool
                else ""
            )
            raise bad(f"{where}.name must be a non-empty string{hint}", f"{where}.name")
        fn = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        chat.append({"type": "function", "function": fn})
        echoed.append({
            "type": "function", "name": name, "description": tool.get("description"),
            "parameters": tool.get("parameters") or dict(_DEFAULT_PARAMETERS),
            "strict": tool.get("strict") if isinstance(tool.get("strict"), bool) else False,
        })  # fmt: skip
    if hosted:
        named = ", ".join(f"tools[{i}] ({kind!r})" for i, kind in hosted)
        raise bad(
            f"Only function tools are served here: {named} "
            f"{'is a tool type' if len(hosted) == 1 else 'are tool types'} this node does not offer.",
            f"tools[{hosted[0][0]}].type",
            "unsupported_tool_type",
        )
    return echoed, chat


def _tool_choice(raw: object, tools: list[dict[str, Any]]) -> tuple[Any, Any]:
    """`tool_choice` as echoed in a Response, and as chat's (None: left out of the chat body)."""
    if raw is None:
        return "auto", None
    if raw in _TOOL_CHOICES:
        return raw, raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        names = [t["name"] for t in tools]
        if not isinstance(name, str) or name not in names:
            listed = ", ".join(repr(n) for n in names) or "none"
            raise bad(f"tool_choice names function {name!r}, which is not in 'tools' (listed: {listed})",
                       "tool_choice.name")  # fmt: skip
        return {"type": "function", "name": name}, {"type": "function", "function": {"name": name}}
    if isinstance(raw, dict):
        raise bad(f"tool_choice of type {raw.get('type')!r} is not supported: use 'auto', 'none', "
                   "'required' or {\"type\": \"function\", \"name\": ...}", "tool_choice")  # fmt: skip
    raise bad(
        f"tool_choice must be 'auto', 'none', 'required' or a function object; got {raw!r}", "tool_choice"
    )


def _text(raw: object) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`text` as echoed in a Response, and chat's `response_format` (None: plain text)."""
    if raw is None:
        return {"format": {"type": "text"}}, None
    if not isinstance(raw, dict):
        raise bad("'text' must be an object", "text")
    fmt = raw.get("format")
    echoed = dict(raw)
    if fmt is None:
        echoed["format"] = {"type": "text"}
        return echoed, None
    if not isinstance(fmt, dict):
        raise bad("'text.format' must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return echoed, None
    if kind == "json_object":
        return echoed, {"type": "json_object"}
    if kind != "json_schema":
        raise bad(f"text.format.type must be 'text', 'json_object' or 'json_schema'; got {kind!r}",
                   "text.format.type")  # fmt: skip
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str) or not name:
        raise bad("text.format.name must be a non-empty string", "text.format.name")
    if not isinstance(schema, dict):
        raise bad("text.format.schema must be a JSON schema object", "text.format.schema")
    spec: dict[str, Any] = {"name": name, "schema": schema}
    for key in ("strict", "description"):
        if fmt.get(key) is not None:
            spec[key] = fmt[key]
    return echoed, {"type": "json_schema", "json_schema": spec}
