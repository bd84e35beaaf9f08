"""A request's `system` and `messages` as chat messages, and the 400 that names a bad field."""

from __future__ import annotations

import json
from typing import Any

from mesh_llm.http_errors import ApiErrorResponse, bad_request

# Block types a client may send that carry what no model server here can read.
_MEDIA_BLOCKS = ("image", "document", "search_result", "container_upload")
# A block's text joined to the next one's: Anthropic keeps blocks apart, a chat turn is one string.
_BLOCK_JOIN = "\n\n"


def bad(message: str, param: str) -> ApiErrorResponse:
    """A 400 naming the request field at fault."""
    return ApiErrorResponse(bad_request(message, param=param))


def _text_of(blocks: list[Any], where: str) -> str:
    """The text of a list of text blocks; any other block is a 400 naming it."""
    texts: list[str] = []
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]"
        kind = _block_type(block, here)
        if kind != "text":
            raise _unsupported_block(kind, here)
        texts.append(_checked_text(block, here))
    return _BLOCK_JOIN.join(texts)


def _block_type(block: object, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise bad(f"{where} must be a content block: an object with a 'type'", where)
    kind: str = block["type"]
    return kind


def _unsupported_block(kind: str, where: str) -> ApiErrorResponse:
    if kind in _MEDIA_BLOCKS:
        return bad(f"{where} is an {kind!r} block; the models of this mesh take text only", where)
    return bad(f"{where} is a {kind!r} block, which is not supported here", f"{where}.type")


def system_prompt(value: object) -> str | None:
    """The top-level `system` (a string or text blocks) as one string, or None if absent."""
    return None if value is None else _system_text(value, "system")


def _system_text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _text_of(value, where)
    raise bad(f"{where} must be a string or an array of text blocks", where)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.tool_use_id must be a non-empty string", f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        text = _text_of(content, f"{where}.content")
    elif isinstance(content, str):
        text = content
    else:
        raise bad(f"{where}.content must be a string or an array of text blocks", f"{where}.content")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise bad(f"{where}.is_error must be true or false", f"{where}.is_error")
    # Chat's tool messages have no error flag: the model learns of the failure from the text.
    if is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user_turn(content: object, where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages, then its text as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list) or not content:
        raise bad(f"{where} must be a string or a non-empty array of content blocks", where)
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(content):
        here = f"{where}[{j}]"
        kind = _block_type(block, here)
        if kind == "tool_result":
            results.append(_tool_result(block, here))
        elif kind == "text":
            texts.append(_checked_text(block, here))
        else:
            raise _unsupported_block(kind, here)
    # Chat wants each result right after the call it answers, so results go before the text.
    if texts:
        results.append({"role": "user", "content": _BLOCK_JOIN.join(texts)})
    return results


def _checked_text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad(f"{where}.text must be a string", f"{where}.text")
    return text


def _assistant_turn(content: object, where: str) -> dict[str, Any]:
    """An assistant turn: its text and tool calls; its thinking is dropped (chat has no place)."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or an array of content blocks", where)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        here = f"{where}[{j}]"
        kind = _block_type(block, here)
        if kind == "text":
            texts.append(_checked_text(block, here))
        elif kind == "tool_use":
            calls.append(_tool_call(block, here))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _unsupported_block(kind, here)
    msg: dict[str, Any] = {"role": "assistant", "content": _BLOCK_JOIN.join(texts)}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.id must be a non-empty string", f"{where}.id")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name must be a non-empty string", f"{where}.name")
    if not isinstance(arguments, dict):
        raise bad(f"{where}.input must be an object", f"{where}.input")
    text = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def chat_messages(value: object) -> list[dict[str, Any]]:
    """`messages` as chat messages: tool results become `tool` turns, tool_use blocks calls."""
    if not isinstance(value, list) or not value:
        raise bad("messages must be a non-empty array of messages", "messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"{where} must be an object with a 'role' and 'content'", where)
        role = msg.get("role")
        if "content" not in msg:
            raise bad(f"{where}.content is required", f"{where}.content")
        if role == "user":
            out.extend(_user_turn(msg["content"], f"{where}.content"))
        elif role == "assistant":
            out.append(_assistant_turn(msg["content"], f"{where}.content"))
        elif role == "system":
            # Claude Code sends instructions mid-conversation this way (its beta
            # `mid-conversation-system`); they stay where they were, as a system turn.
            out.append({"role": "system", "content": _system_text(msg["content"], f"{where}.content")})
        else:
            raise bad(f"{where}.role must be 'user', 'assistant' or 'system', not {role!r}", f"{where}.role")
    return out
