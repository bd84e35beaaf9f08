"""A request's `input` items as chat messages, and the 400 that names a bad field."""

from __future__ import annotations

from typing import Any

from mesh_llm.api.translate.responses._store import Message
from mesh_llm.http_errors import ApiError, ApiErrorResponse

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text")
_MEDIA_PARTS = ("input_image", "input_file", "input_audio")


def bad(message: str, param: str | None, code: str = "invalid_value") -> ApiErrorResponse:
    """A 400 naming the request field at fault."""
    return ApiErrorResponse(ApiError(400, message, code=code, param=param))


def input_messages(raw: object, history: list[Message]) -> list[Message]:
    """The chat messages for `input`: a string (one user message) or a list of items."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise bad("'input' must be a string or an array of input items", "input")
    calls = {c["id"]: c["function"]["name"] for m in history for c in m.get("tool_calls", ())}
    out: list[Message] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            calls[call["id"]] = call["function"]["name"]
            last = out[-1] if out else None
            # Consecutive calls (and calls right after the assistant's text) are one chat turn.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(_call_output(item, where, calls))
        elif kind == "reasoning":
            continue  # the model's earlier reasoning is not replayed to it
        else:
            raise bad(
                f"{where}.type {kind!r} is not supported: input items are messages, 'function_call', "
                "'function_call_output' and 'reasoning'",
                f"{where}.type",
            )
    return out


def _message(item: dict[str, Any], where: str) -> Message:
    role = item.get("role")
    if role not in _ROLES:
        raise bad(f"{where}.role must be 'user', 'assistant', 'system' or 'developer'; got {role!r}",
                   f"{where}.role")  # fmt: skip
    content = item.get("content")
    if isinstance(content, str):
        return {"role": _ROLES[role], "content": content}
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or an array of content parts", f"{where}.content")
    return {"role": _ROLES[role], "content": _parts_text(content, f"{where}.content")}


def _parts_text(parts: list[Any], where: str) -> str:
    texts: list[str] = []
    for j, part in enumerate(parts):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        key = "refusal" if kind == "refusal" else "text"
        if kind in _TEXT_PARTS or kind == "refusal":
            text = part.get(key)
            if not isinstance(text, str):
                raise bad(f"{here}.{key} must be a string", f"{here}.{key}")
            texts.append(text)
        elif kind in _MEDIA_PARTS:
            raise bad(
                f"The models here take text only; {here} is an {kind!r} part", here, "unsupported_content"
            )
        else:
            raise bad(f"{here}.type {kind!r} is not a supported content part type", f"{here}.type")
    return "".join(texts)  # as chat joins parts: nothing added between them


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    fields: dict[str, str] = {}
    for key in ("call_id", "name", "arguments"):
        value = item.get(key)
        if not isinstance(value, str) or (key != "arguments" and not value):
            raise bad(f"{where}.{key} must be a string", f"{where}.{key}")
        fields[key] = value
    return {
        "id": fields["call_id"],
        "type": "function",
        "function": {"name": fields["name"], "arguments": fields["arguments"]},
    }


def _call_output(item: dict[str, Any], where: str, calls: dict[str, str]) -> Message:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.call_id must be a non-empty string", f"{where}.call_id")
    if call_id not in calls:
        raise bad(
            f"No tool call found for function call output with call_id {call_id!r}. Send the "
            "'function_call' item before it, or the 'previous_response_id' of the response that made it.",
            f"{where}.call_id",
        )
    output = item.get("output")
    if isinstance(output, list):
        output = _parts_text(output, f"{where}.output")
    if not isinstance(output, str):
        raise bad(f"{where}.output must be a string or an array of text parts", f"{where}.output")
    return {"role": "tool", "tool_call_id": call_id, "name": calls[call_id], "content": output}
