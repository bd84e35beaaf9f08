"""A Messages request checked and translated into one chat body (400s name the field)."""

from __future__ import annotations

import math
from typing import Any

from mesh_llm.api.translate import IdFactory, random_id
from mesh_llm.api.translate.anthropic._answer import MessagesTurn
from mesh_llm.api.translate.anthropic._errors import anthropic_error
from mesh_llm.api.translate.anthropic._messages import bad, chat_messages, system_prompt
from mesh_llm.http_errors import ApiError

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_THINKING_TYPES = ("enabled", "disabled", "adaptive")


def _tools(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("tools must be an array of tools", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad(f"{where} must be an object", where)
        kind, name = tool.get("type"), tool.get("name")
        if kind not in (None, "custom"):
            raise bad(
                f"{where} is the server tool {kind!r} (name {name!r}); this mesh runs only custom "
                "tools, given with a name, description and input_schema",
                f"{where}.type",
            )
        if not isinstance(name, str) or not name:
            raise bad(f"{where}.name must be a non-empty string", f"{where}.name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad(f"{where}.input_schema must be a JSON schema object", f"{where}.input_schema")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise bad(f"{where}.description must be a string", f"{where}.description")
            fn["description"] = description
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(value: object, tools: list[dict[str, Any]], chat: dict[str, Any]) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or (kind not in _TOOL_CHOICES and kind != "tool"):
        raise bad("tool_choice must be {'type': 'auto' | 'any' | 'tool' | 'none'}", "tool_choice")
    names = [tool["function"]["name"] for tool in tools]
    if kind in ("any", "tool") and not names:
        raise bad(f"tool_choice {kind!r} needs a non-empty 'tools' array", "tool_choice")
    if kind == "tool":
        name = value.get("name")
        if name not in names:
            listed = ", ".join(repr(n) for n in names)
            raise bad(f"tool_choice names {name!r}, which is not in 'tools' ({listed})", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    parallel = value.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad(
            "tool_choice.disable_parallel_tool_use must be true or false",
            "tool_choice.disable_parallel_tool_use",
        )
    if parallel and kind != "none":
        chat["parallel_tool_calls"] = False


def _number(body: dict[str, Any], key: str, lo: float, hi: float, chat: dict[str, Any]) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"{key} must be a number, not {value!r}", key)
    if not lo <= value <= hi:
        raise bad(f"{key} must be between {lo:g} and {hi:g}, not {value}", key)
    chat[key] = value


def _integer(
    body: dict[str, Any], key: str, lo: int, chat: dict[str, Any], *, required: bool = False
) -> None:
    value = body.get(key)
    if value is None:
        if required:
            raise bad(f"{key}: Field required", key)
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise bad(f"{key} must be an integer of at least {lo}, not {value!r}", key)
    chat[key] = value


def _stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad("stop_sequences must be an array of strings", "stop_sequences")
    return tuple(value)


def _check_thinking(value: object) -> None:
    # Accepted, not acted on: a model that reasons does so whatever it is asked, and its
    # reasoning comes back as thinking blocks.
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or kind not in _THINKING_TYPES:
        raise bad(
            "thinking must be {'type': 'enabled', 'budget_tokens': N} or {'type': 'disabled'}", "thinking"
        )
    budget = value.get("budget_tokens")
    if kind == "enabled" and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise bad("thinking.budget_tokens must be a positive integer", "thinking.budget_tokens")


def _prompt(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body's prompt part: model, messages (the system turn first), tools, tool_choice."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad("model: Field required (a string)", "model")
    messages = chat_messages(body.get("messages"))
    system = system_prompt(body.get("system"))
    if system:
        messages.insert(0, {"role": "system", "content": system})
    chat: dict[str, Any] = {"model": model, "messages": messages}
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    _tool_choice(body.get("tool_choice"), tools, chat)
    _check_thinking(body.get("thinking"))
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad("metadata must be an object", "metadata")
    return chat


def count_tokens_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body whose prompt tokens are a count_tokens request's input tokens.

    It carries what the prompt is rendered from (model, messages with the system turn, tools);
    `max_tokens` is not asked for, as Anthropic's count_tokens takes none.
    """
    return _prompt(body)


class MessagesTranslator:
    """The `Translator` of Anthropic Messages (see the module's docstring)."""

    def __init__(self, new_id: IdFactory = random_id) -> None:
        self._new_id = new_id

    def begin(self, body: dict[str, Any]) -> MessagesTurn:
        """Check a Messages request and translate it to one chat body (400s name the field)."""
        chat = _prompt(body)
        _integer(body, "max_tokens", 1, chat, required=True)
        stops = _stop_sequences(body.get("stop_sequences"))
        if stops:
            chat["stop"] = list(stops)
        _number(body, "temperature", 0.0, 1.0, chat)
        _number(body, "top_p", 0.0, 1.0, chat)
        _integer(body, "top_k", 0, chat)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise bad("stream must be true or false", "stream")
        chat["stream"] = stream
        if stream:
            chat["stream_options"] = {"include_usage": True}
        return MessagesTurn(chat, chat["model"], stops, self._new_id)

    def error_body(self, error: ApiError) -> dict[str, Any]:
        """`error` in Anthropic's error shape."""
        return anthropic_error(error)
