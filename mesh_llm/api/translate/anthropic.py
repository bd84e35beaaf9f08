"""Anthropic Messages (`POST /v1/messages`) over the chat path: requests, answers, streams, errors.

    Messages request ──begin──▶ chat body      (system, turns, tool_use/tool_result, tools, ...)
    chat completion ──answer──▶ Message        (thinking, text and tool_use blocks, stop_reason)
    chat chunks ──MessagesStream──▶ SSE events  (message_start, content_block_*, message_delta,
                                                 message_stop; `error` when the host fails)
    ApiError ──anthropic_error──▶ {"type": "error", "error": {"type", "message"}}

Only what a model server can do is taken: text, function tools and reasoning. Images, documents
and Anthropic's server tools (web search, bash, ...) get a 400 that names them, rather than a
model silently answering without them. Unknown top-level fields are ignored, as Anthropic's SDKs
add new ones over time. Pure: ids come from the `IdFactory` the translator is given.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_llm.api.errors import ApiError, ApiErrorResponse, bad_request
from mesh_llm.api.translate import CHAT_PATH, ChatChunk, IdFactory

__all__ = [
    "MessagesStream",
    "MessagesTranslator",
    "MessagesTurn",
    "anthropic_error",
    "count_tokens_chat",
    "error_type",
]

# Block types a client may send that carry what no model server here can read.
_MEDIA_BLOCKS = ("image", "document", "search_result", "container_upload")
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
# A block's text joined to the next one's: Anthropic keeps blocks apart, a chat turn is one string.
_BLOCK_JOIN = "\n\n"


def _random_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _bad(message: str, param: str) -> ApiErrorResponse:
    return ApiErrorResponse(bad_request(message, param=param))


# ── errors ─────────────────────────────────────────────────────────────────────────────────────


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status (as its API documents them)."""
    named = {
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
    if status in named:
        return named[status]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error(error: ApiError) -> dict[str, Any]:
    """`error` in Anthropic's error shape; the HTTP status stays `error.status`."""
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}


# ── requests ───────────────────────────────────────────────────────────────────────────────────


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
        raise _bad(f"{where} must be a content block: an object with a 'type'", where)
    kind: str = block["type"]
    return kind


def _unsupported_block(kind: str, where: str) -> ApiErrorResponse:
    if kind in _MEDIA_BLOCKS:
        return _bad(f"{where} is an {kind!r} block; the models of this mesh take text only", where)
    return _bad(f"{where} is a {kind!r} block, which is not supported here", f"{where}.type")


def _system(value: object) -> str | None:
    return None if value is None else _system_text(value, "system")


def _system_text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _text_of(value, where)
    raise _bad(f"{where} must be a string or an array of text blocks", where)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.tool_use_id must be a non-empty string", f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        text = _text_of(content, f"{where}.content")
    elif isinstance(content, str):
        text = content
    else:
        raise _bad(f"{where}.content must be a string or an array of text blocks", f"{where}.content")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _bad(f"{where}.is_error must be true or false", f"{where}.is_error")
    # Chat's tool messages have no error flag: the model learns of the failure from the text.
    if is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user_turn(content: object, where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages, then its text as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list) or not content:
        raise _bad(f"{where} must be a string or a non-empty array of content blocks", where)
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
        raise _bad(f"{where}.text must be a string", f"{where}.text")
    return text


def _assistant_turn(content: object, where: str) -> dict[str, Any]:
    """An assistant turn: its text and tool calls; its thinking is dropped (chat has no place)."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of content blocks", where)
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
        raise _bad(f"{where}.id must be a non-empty string", f"{where}.id")
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
    if not isinstance(arguments, dict):
        raise _bad(f"{where}.input must be an object", f"{where}.input")
    text = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def _messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages must be a non-empty array of messages", "messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(f"{where} must be an object with a 'role' and 'content'", where)
        role = msg.get("role")
        if "content" not in msg:
            raise _bad(f"{where}.content is required", f"{where}.content")
        if role == "user":
            out.extend(_user_turn(msg["content"], f"{where}.content"))
        elif role == "assistant":
            out.append(_assistant_turn(msg["content"], f"{where}.content"))
        elif role == "system":
            # Claude Code sends instructions mid-conversation this way (its beta
            # `mid-conversation-system`); they stay where they were, as a system turn.
            out.append({"role": "system", "content": _system_text(msg["content"], f"{where}.content")})
        else:
            raise _bad(f"{where}.role must be 'user', 'assistant' or 'system', not {role!r}", f"{where}.role")
    return out


def _tools(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools must be an array of tools", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"{where} must be an object", where)
        kind, name = tool.get("type"), tool.get("name")
        if kind not in (None, "custom"):
            raise _bad(
                f"{where} is the server tool {kind!r} (name {name!r}); this mesh runs only custom "
                "tools, given with a name, description and input_schema",
                f"{where}.type",
            )
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"{where}.input_schema must be a JSON schema object", f"{where}.input_schema")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise _bad(f"{where}.description must be a string", f"{where}.description")
            fn["description"] = description
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(value: object, tools: list[dict[str, Any]], chat: dict[str, Any]) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or (kind not in _TOOL_CHOICES and kind != "tool"):
        raise _bad("tool_choice must be {'type': 'auto' | 'any' | 'tool' | 'none'}", "tool_choice")
    names = [tool["function"]["name"] for tool in tools]
    if kind in ("any", "tool") and not names:
        raise _bad(f"tool_choice {kind!r} needs a non-empty 'tools' array", "tool_choice")
    if kind == "tool":
        name = value.get("name")
        if name not in names:
            listed = ", ".join(repr(n) for n in names)
            raise _bad(f"tool_choice names {name!r}, which is not in 'tools' ({listed})", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    parallel = value.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad(
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
        raise _bad(f"{key} must be a number, not {value!r}", key)
    if not lo <= value <= hi:
        raise _bad(f"{key} must be between {lo:g} and {hi:g}, not {value}", key)
    chat[key] = value


def _integer(
    body: dict[str, Any], key: str, lo: int, chat: dict[str, Any], *, required: bool = False
) -> None:
    value = body.get(key)
    if value is None:
        if required:
            raise _bad(f"{key}: Field required", key)
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _bad(f"{key} must be an integer of at least {lo}, not {value!r}", key)
    chat[key] = value


def _stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad("stop_sequences must be an array of strings", "stop_sequences")
    return tuple(value)


def _check_thinking(value: object) -> None:
    # Accepted, not acted on: a model that reasons does so whatever it is asked, and its
    # reasoning comes back as thinking blocks.
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or kind not in _THINKING_TYPES:
        raise _bad(
            "thinking must be {'type': 'enabled', 'budget_tokens': N} or {'type': 'disabled'}", "thinking"
        )
    budget = value.get("budget_tokens")
    if kind == "enabled" and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise _bad("thinking.budget_tokens must be a positive integer", "thinking.budget_tokens")


def _prompt(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body's prompt part: model, messages (the system turn first), tools, tool_choice."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model: Field required (a string)", "model")
    messages = _messages(body.get("messages"))
    system = _system(body.get("system"))
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
        raise _bad("metadata must be an object", "metadata")
    return chat


def count_tokens_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body whose prompt tokens are a count_tokens request's input tokens.

    It carries what the prompt is rendered from (model, messages with the system turn, tools);
    `max_tokens` is not asked for, as Anthropic's count_tokens takes none.
    """
    return _prompt(body)


@dataclass
class MessagesTurn:
    """One Messages request as a chat body, and how to read the chat answer back."""

    chat: dict[str, Any]
    model: str
    stop_sequences: tuple[str, ...]
    new_id: IdFactory
    path: str = CHAT_PATH
    fallback: Callable[[], dict[str, Any]] | None = None

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The Message for a whole chat completion."""
        choices = chat.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        text = message.get("content")
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
        calls = [call for call in message.get("tool_calls") or [] if isinstance(call, dict)]
        for call in calls:
            fn = call.get("function") or {}
            content.append({
                "type": "tool_use",
                "id": self.call_id(call.get("id")),
                "name": fn.get("name") or "",
                "input": _arguments(fn.get("arguments")),
            })  # fmt: skip
        reason, sequence = self.stop(choice.get("finish_reason"), choice.get("stop_reason"), bool(calls))
        return {
            "id": self.new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": _usage(chat.get("usage")),
        }

    def stream(self) -> MessagesStream:
        """A translator for the streamed chat answer of this turn."""
        return MessagesStream(self)

    def call_id(self, call_id: object) -> str:
        """A tool_use block's id: the chat call's own, or a fresh `toolu_` one."""
        return call_id if isinstance(call_id, str) and call_id else self.new_id("toolu_")

    def stop(self, finish: object, matched: object, called: bool) -> tuple[str, str | None]:
        """Anthropic's stop_reason and stop_sequence for a chat finish_reason."""
        if finish == "tool_calls" or (called and finish in ("stop", None)):
            return "tool_use", None
        if finish == "length":
            return "max_tokens", None
        if finish == "content_filter":
            return "refusal", None
        # `stop_reason` on a choice is vLLM's extension: the stop string that ended the answer.
        if isinstance(matched, str) and matched in self.stop_sequences:
            return "stop_sequence", matched
        return "end_turn", None


def _arguments(text: object) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        parsed = json.loads(text) if isinstance(text, str) and text.strip() else {}
    except (ValueError, RecursionError):
        parsed = None
    # A call whose arguments are no JSON object keeps them, rather than lose them silently.
    return parsed if isinstance(parsed, dict) else {"arguments": text}


def _usage(usage: object) -> dict[str, Any]:
    """Anthropic's usage from chat's: input_tokens leaves out what was read from the cache."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens")
    prompt = prompt if isinstance(prompt, int) else 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and 0 <= cached <= prompt else 0
    output = usage.get("completion_tokens")
    return {
        "input_tokens": prompt - cached,
        "output_tokens": output if isinstance(output, int) else 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


class MessagesTranslator:
    """The `Translator` of Anthropic Messages (see the module's docstring)."""

    def __init__(self, new_id: IdFactory = _random_id) -> None:
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
            raise _bad("stream must be true or false", "stream")
        chat["stream"] = stream
        if stream:
            chat["stream_options"] = {"include_usage": True}
        return MessagesTurn(chat, chat["model"], stops, self._new_id)

    def error_body(self, error: ApiError) -> dict[str, Any]:
        """`error` in Anthropic's error shape."""
        return anthropic_error(error)


# ── streams ────────────────────────────────────────────────────────────────────────────────────


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class MessagesStream:
    """Chat chunks in, Anthropic's stream events out, one content block open at a time.

    A block opens when the first piece of its kind arrives (thinking, text, or a tool call with
    a new index) and closes when another kind begins or the answer ends. The usage chunk comes
    last in a chat stream, so `message_start` says 0 input tokens and `message_delta` (whose
    counts SDKs take as the totals) says how many there were.
    """

    def __init__(self, turn: MessagesTurn) -> None:
        self.turn = turn
        self._started = False  # message_start sent
        self._closed = False  # message_stop or error sent: nothing more
        self._index = -1  # of the last block opened
        self._open: str | None = None  # "thinking", "text" or "tool", while a block is open
        self._tool: object = None  # the chat index of the open tool call
        self._finish: object = None  # the chat finish_reason
        self._matched: object = None  # the choice's stop_reason: the stop string matched
        self._called = False
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: ChatChunk) -> list[bytes]:
        """The events for one chat chunk."""
        if self._closed:
            return []
        out = self._start()
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        reasoning, text = delta.get("reasoning_content"), delta.get("content")
        if isinstance(reasoning, str) and reasoning:
            out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        if isinstance(text, str) and text:
            out += self._open_block("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or []:
            out += self._tool_piece(call)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
        if choice.get("stop_reason") is not None:
            self._matched = choice["stop_reason"]
        return out

    def end(self) -> list[bytes]:
        """The closing events: the open block's stop, message_delta and message_stop."""
        if self._closed:
            return []
        out = self._start() + self._close_block()
        self._closed = True
        reason, sequence = self.turn.stop(self._finish, self._matched, self._called)
        usage = _usage(self._usage)
        out.append(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        }))  # fmt: skip
        out.append(_event("message_stop", {"type": "message_stop"}))
        return out

    def fail(self, error: ApiError) -> list[bytes]:
        """An `error` event, as Anthropic ends a stream it cannot finish; nothing follows it."""
        if self._closed:
            return []
        self._closed = True
        return [_event("error", anthropic_error(error))]

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.turn.new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self.turn.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [_event("message_start", {"type": "message_start", "message": message})]

    def _open_block(self, kind: str, block: dict[str, Any], tool: object = None) -> list[bytes]:
        if self._open == kind and self._tool == tool:
            return []
        out = self._close_block()
        self._index += 1
        self._open, self._tool = kind, tool
        out.append(_event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                  "content_block": block}))  # fmt: skip
        return out

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = self._tool = None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )

    def _tool_piece(self, call: object) -> list[bytes]:
        if not isinstance(call, dict):
            return []
        fn = call.get("function") or {}
        key = call.get("index", 0)
        out: list[bytes] = []
        if not (self._open == "tool" and self._tool == key):
            self._called = True
            name = fn.get("name") or ""
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": self.turn.call_id(call.get("id")),
                "name": name,
                "input": {},
            }
            out += self._open_block("tool", block, key)
        piece = fn.get("arguments")
        if isinstance(piece, str) and piece:
            out.append(self._delta({"type": "input_json_delta", "partial_json": piece}))
        return out
