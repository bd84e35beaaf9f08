"""OpenAI Responses (`POST /v1/responses`) served over the chat path.

A request becomes one Chat Completions body: `instructions` a leading system message, `input`
items the messages after it (`function_call` items an assistant turn's `tool_calls`,
`function_call_output` items `tool` messages), the flat function tools chat's nested ones,
`text.format` the `response_format`, `max_output_tokens` the `max_tokens`. The chat answer
comes back as a Response object whose `output` holds, in order, a `reasoning` item, a `message`
item and one `function_call` item per call; streamed, as the Responses event sequence:

    response.created, response.in_progress,
    per item: response.output_item.added,
        reasoning  response.content_part.added, response.reasoning_text.delta...,
                   response.reasoning_text.done, response.content_part.done
        message    response.content_part.added, response.output_text.delta...,
                   response.output_text.done, response.content_part.done
        call       response.function_call_arguments.delta..., response.function_call_arguments.done
    response.output_item.done,
    then response.completed or response.incomplete (or response.failed, and nothing after it).

`previous_response_id` is served from a `ResponseStore` the translator owns: every response made
with `store` keeps the whole chat conversation that led to it (its predecessors' included) and
its own answer as chat messages, so a follow-up replays that chain before its new input. The
chain holds no `instructions`: as at OpenAI, each request's own instructions apply.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_llm.api.errors import ApiError, ApiErrorResponse
from mesh_llm.api.translate import CHAT_PATH, ChatChunk, IdFactory

__all__ = [
    "MAX_AGE_S",
    "MAX_STORED",
    "ResponseStore",
    "ResponsesStream",
    "ResponsesTranslator",
    "ResponsesTurn",
]

Message = dict[str, Any]
"""One chat message, in the shape a Chat Completions body carries it."""

MAX_STORED = 1000
"""Responses kept for `previous_response_id`, oldest dropped first."""
MAX_AGE_S = 3600.0
"""How long a stored response can be continued, in seconds."""

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text")
_MEDIA_PARTS = ("input_image", "input_file", "input_audio")
_TOOL_CHOICES = ("auto", "none", "required")
_DEFAULT_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def _random_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiErrorResponse:
    return ApiErrorResponse(ApiError(400, message, code=code, param=param))


# ---- the store of earlier responses --------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    at: float
    conversation: tuple[Message, ...]


class ResponseStore:
    """Conversations of stored responses by response id, bounded in count and in age.

    Entries are kept in the order they were stored, so the oldest is the first to go both when
    the count is over `max_count` and when it is `max_age_s` old. A chain's entries share their
    message objects (a follow-up's conversation is its predecessor's messages plus its own), so a
    long agent session costs its messages once, not once per turn. Stored messages are never
    changed: what leaves for a model server is a copy.
    """

    def __init__(self, max_count: int, max_age_s: float, now: Callable[[], float]) -> None:
        self._max_count = max_count
        self._max_age_s = max_age_s
        self._now = now
        self._items: OrderedDict[str, _Stored] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def put(self, response_id: str, conversation: list[Message]) -> None:
        """Keep `conversation` (the chain up to and including the response's answer)."""
        self._expire()
        self._items[response_id] = _Stored(self._now(), tuple(conversation))
        self._items.move_to_end(response_id)
        while len(self._items) > self._max_count:
            self._items.popitem(last=False)

    def conversation(self, response_id: str) -> list[Message] | None:
        """The stored chain of `response_id` (its messages read-only), or None if unknown or expired."""
        self._expire()
        stored = self._items.get(response_id)
        return None if stored is None else list(stored.conversation)

    def _expire(self) -> None:
        oldest_kept = self._now() - self._max_age_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.at > oldest_kept:
                return
            self._items.popitem(last=False)


# ---- requests ------------------------------------------------------------------------------


class ResponsesTranslator:
    """The Responses API as a `Translator`: owns the store behind `previous_response_id`.

    The defaults (random ids, the wall clock) are the node's; tests pass their own.
    """

    def __init__(
        self,
        new_id: IdFactory = _random_id,
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
            raise _bad("'model' must be a non-empty string", "model", "invalid_request")
        stream = _flag(body, "stream", False)
        store = _flag(body, "store", True)
        parallel = _flag(body, "parallel_tool_calls", True)
        instructions = _optional(body, "instructions", str, "a string")
        previous = _optional(body, "previous_response_id", str, "a string")
        history = self._chain(previous) if previous is not None else []
        messages = _input_messages(body.get("input"), history)
        tools, chat_tools = _tools(body.get("tools"))
        tool_choice, chat_tool_choice = _tool_choice(body.get("tool_choice"), tools)
        text, response_format = _text(body.get("text"))
        reasoning = _optional(body, "reasoning", dict, "an object")
        metadata = _optional(body, "metadata", dict, "an object")
        user = _optional(body, "user", str, "a string")
        max_output = _optional(body, "max_output_tokens", int, "an integer")
        if max_output is not None and max_output < 1:
            raise _bad("'max_output_tokens' must be at least 1", "max_output_tokens")
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
            raise _bad(
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
        raise _bad(f"'{key}' must be a boolean", key)
    return value


def _optional(body: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    # bool is an int to Python, never to a JSON schema
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise _bad(f"'{key}' must be {what}", key)
    return value


def _number(body: dict[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise _bad(f"'{key}' must be a number", key)
    return value


def _input_messages(raw: object, history: list[Message]) -> list[Message]:
    """The chat messages for `input`: a string (one user message) or a list of items."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise _bad("'input' must be a string or an array of input items", "input")
    calls = {c["id"]: c["function"]["name"] for m in history for c in m.get("tool_calls", ())}
    out: list[Message] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", where)
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
            raise _bad(
                f"{where}.type {kind!r} is not supported: input items are messages, 'function_call', "
                "'function_call_output' and 'reasoning'",
                f"{where}.type",
            )
    return out


def _message(item: dict[str, Any], where: str) -> Message:
    role = item.get("role")
    if role not in _ROLES:
        raise _bad(f"{where}.role must be 'user', 'assistant', 'system' or 'developer'; got {role!r}",
                   f"{where}.role")  # fmt: skip
    content = item.get("content")
    if isinstance(content, str):
        return {"role": _ROLES[role], "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or an array of content parts", f"{where}.content")
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
                raise _bad(f"{here}.{key} must be a string", f"{here}.{key}")
            texts.append(text)
        elif kind in _MEDIA_PARTS:
            raise _bad(
                f"The models here take text only; {here} is an {kind!r} part", here, "unsupported_content"
            )
        else:
            raise _bad(f"{here}.type {kind!r} is not a supported content part type", f"{here}.type")
    return "".join(texts)  # as chat joins parts: nothing added between them


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    fields: dict[str, str] = {}
    for key in ("call_id", "name", "arguments"):
        value = item.get(key)
        if not isinstance(value, str) or (key != "arguments" and not value):
            raise _bad(f"{where}.{key} must be a string", f"{where}.{key}")
        fields[key] = value
    return {
        "id": fields["call_id"],
        "type": "function",
        "function": {"name": fields["name"], "arguments": fields["arguments"]},
    }


def _call_output(item: dict[str, Any], where: str, calls: dict[str, str]) -> Message:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.call_id must be a non-empty string", f"{where}.call_id")
    if call_id not in calls:
        raise _bad(
            f"No tool call found for function call output with call_id {call_id!r}. Send the "
            "'function_call' item before it, or the 'previous_response_id' of the response that made it.",
            f"{where}.call_id",
        )
    output = item.get("output")
    if isinstance(output, list):
        output = _parts_text(output, f"{where}.output")
    if not isinstance(output, str):
        raise _bad(f"{where}.output must be a string or an array of text parts", f"{where}.output")
    return {"role": "tool", "tool_call_id": call_id, "name": calls[call_id], "content": output}


def _tools(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The function tools as echoed in a Response, and as chat tools."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise _bad("'tools' must be an array", "tools")
    echoed: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    hosted: list[tuple[int, object]] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"{where} must be an object", where)
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
            raise _bad(f"{where}.name must be a non-empty string{hint}", f"{where}.name")
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
        raise _bad(
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
            raise _bad(f"tool_choice names function {name!r}, which is not in 'tools' (listed: {listed})",
                       "tool_choice.name")  # fmt: skip
        return {"type": "function", "name": name}, {"type": "function", "function": {"name": name}}
    if isinstance(raw, dict):
        raise _bad(f"tool_choice of type {raw.get('type')!r} is not supported: use 'auto', 'none', "
                   "'required' or {\"type\": \"function\", \"name\": ...}", "tool_choice")  # fmt: skip
    raise _bad(
        f"tool_choice must be 'auto', 'none', 'required' or a function object; got {raw!r}", "tool_choice"
    )


def _text(raw: object) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`text` as echoed in a Response, and chat's `response_format` (None: plain text)."""
    if raw is None:
        return {"format": {"type": "text"}}, None
    if not isinstance(raw, dict):
        raise _bad("'text' must be an object", "text")
    fmt = raw.get("format")
    echoed = dict(raw)
    if fmt is None:
        echoed["format"] = {"type": "text"}
        return echoed, None
    if not isinstance(fmt, dict):
        raise _bad("'text.format' must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return echoed, None
    if kind == "json_object":
        return echoed, {"type": "json_object"}
    if kind != "json_schema":
        raise _bad(f"text.format.type must be 'text', 'json_object' or 'json_schema'; got {kind!r}",
                   "text.format.type")  # fmt: skip
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str) or not name:
        raise _bad("text.format.name must be a non-empty string", "text.format.name")
    if not isinstance(schema, dict):
        raise _bad("text.format.schema must be a JSON schema object", "text.format.schema")
    spec: dict[str, Any] = {"name": name, "schema": schema}
    for key in ("strict", "description"):
        if fmt.get(key) is not None:
            spec[key] = fmt[key]
    return echoed, {"type": "json_schema", "json_schema": spec}


# ---- answers -------------------------------------------------------------------------------


@dataclass
class _Call:
    call_id: str
    name: str
    arguments: str


def _usage(raw: object) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    cached = (raw.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (raw.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(raw.get("total_tokens") or prompt + completion),
    }


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [_output_text(text)] if text is not None else []
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def _call_item(item_id: str, call: _Call, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call.call_id, "name": call.name,
            "arguments": call.arguments, "status": status}  # fmt: skip


def _assistant_turn(text: str, calls: list[_Call]) -> Message:
    """The answer as a chat message, to replay after `previous_response_id`."""
    if not calls:
        return {"role": "assistant", "content": text}
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


def _error_code(error: ApiError) -> str:
    # A Response's `error.code` is one of OpenAI's fixed names; the message keeps the detail.
    if error.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= error.status < 500 else "server_error"


@dataclass
class ResponsesTurn:
    """One Responses request as chat: `chat` to send, and how its answer becomes a Response."""

    chat: dict[str, Any]
    response_id: str
    created_at: int
    model: str
    echo: dict[str, Any]
    conversation: list[Message]
    """The chain before this answer (replayed and new input), without the instructions."""
    keep: ResponseStore | None
    """Where the finished response is stored; None when the request said `store: false`."""
    new_id: IdFactory
    now: Callable[[], float]
    path: str = CHAT_PATH
    fallback: Callable[[], dict[str, Any]] | None = None

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The Response object in a given state."""
        body: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": output,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": usage,
            **self.echo,
        }
        if status == "completed":
            body["completed_at"] = int(self.now())
        return body

    def finish(
        self,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        status: str,
        text: str,
        calls: list[_Call],
    ) -> dict[str, Any]:
        """The final Response; stores the chain when the request asked for it."""
        if self.keep is not None:
            self.keep.put(self.response_id, [*self.conversation, _assistant_turn(text, calls)])
        return self.response(status, output, usage)

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The Response for a whole chat completion."""
        choices = chat.get("choices") or [{}]
        message = choices[0].get("message") or {}
        status = "incomplete" if choices[0].get("finish_reason") == "length" else "completed"
        reasoning = message.get("reasoning_content") or ""
        text = message.get("content") or ""
        calls = [
            _Call(
                c.get("id") or self.new_id("call_"),
                (c.get("function") or {}).get("name") or "",
                (c.get("function") or {}).get("arguments") or "",
            )
            for c in message.get("tool_calls") or []
        ]
        output: list[dict[str, Any]] = []
        if reasoning:
            output.append(_reasoning_item(self.new_id("rs_"), reasoning, "completed"))
        if text or not calls:
            output.append(_message_item(self.new_id("msg_"), text, "completed"))
        output += [_call_item(self.new_id("fc_"), c, "completed") for c in calls]
        output[-1]["status"] = status  # a cut-off answer is cut off in its last item
        return self.finish(output, _usage(chat.get("usage")), status, text, calls)

    def stream(self) -> ResponsesStream:
        """A translator for the streamed chat answer."""
        return ResponsesStream(self)


# ---- streams -------------------------------------------------------------------------------


@dataclass
class _Item:
    """One output item while it streams: its text is reasoning, answer text or call arguments."""

    kind: str  # reasoning | message | function_call
    id: str
    index: int
    text: str = ""
    call: _Call | None = None
    status: str = "in_progress"

    def as_json(self) -> dict[str, Any]:
        if self.kind == "reasoning":
            return _reasoning_item(self.id, self.text if self.status != "in_progress" else "", self.status)
        if self.kind == "message":
            return _message_item(self.id, self.text if self.status != "in_progress" else None, self.status)
        assert self.call is not None
        return _call_item(self.id, _Call(self.call.call_id, self.call.name, self.text), self.status)


class ResponsesStream:
    """Chat chunks in, Responses events out; every event numbered from 0 in the order sent."""

    def __init__(self, turn: ResponsesTurn) -> None:
        self._turn = turn
        self._sequence = 0
        self._started = False
        self._over = False
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # chat tool-call index -> its item
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: ChatChunk) -> list[bytes]:
        """The events for one chat chunk."""
        if self._over:
            return []
        out = self._start()
        error = chunk.get("error")
        if isinstance(error, dict):  # an error event in the chat stream ends the answer
            message = str(error.get("message") or "the model server failed")
            return out + self.fail(ApiError(500, message, type="server_error", code=error.get("code")))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a Response has one answer; `n` is never asked for
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._text("reasoning", delta["reasoning_content"])
            if delta.get("content"):
                out += self._text("message", delta["content"])
            for entry in delta.get("tool_calls") or ():
                out += self._call_delta(entry)
            self._finish = choice.get("finish_reason") or self._finish
        return out

    def end(self) -> list[bytes]:
        """The last item's closing events and `response.completed` (or `.incomplete`)."""
        if self._over:
            return []
        out = self._start()
        self._over = True
        status = "incomplete" if self._finish == "length" else "completed"
        if self._open is None and not self._items:  # an empty answer is still a message
            out += self._open_item("message")
        out += self._close(status)
        output = [item.as_json() for item in self._items]
        text = "".join(item.text for item in self._items if item.kind == "message")
        calls = [_Call(i.call.call_id, i.call.name, i.text) for i in self._items if i.call is not None]
        response = self._turn.finish(output, _usage(self._usage), status, text, calls)
        return [*out, self._event(f"response.{status}", response=response)]

    def fail(self, error: ApiError) -> list[bytes]:
        """`response.failed` with the error; nothing is sent after it."""
        if self._over:
            return []
        out = self._start()
        self._over = True
        if self._open is not None:
            self._open.status = "incomplete"
        output = [item.as_json() for item in self._items]
        failure = {"code": _error_code(error), "message": error.message}
        response = self._turn.response("failed", output, _usage(self._usage), failure)
        return [*out, self._event("response.failed", response=response)]

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        response = self._turn.response("in_progress", [])
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]  # fmt: skip

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    def _open_item(self, kind: str, call: _Call | None = None) -> list[bytes]:
        out = self._close("completed")
        prefix = {"reasoning": "rs_", "message": "msg_", "function_call": "fc_"}[kind]
        item = _Item(kind, self._turn.new_id(prefix), len(self._items), call=call)
        self._items.append(item)
        self._open = item
        out.append(self._event("response.output_item.added", output_index=item.index, item=item.as_json()))
        if kind != "function_call":
            part = _output_text("") if kind == "message" else {"type": "reasoning_text", "text": ""}
            out.append(
                self._event("response.content_part.added", **self._where(item), content_index=0, part=part)
            )
        return out

    def _close(self, status: str) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        self._open = None
        out: list[bytes] = []
        where = self._where(item)
        if item.kind == "message":
            out.append(
                self._event(
                    "response.output_text.done", **where, content_index=0, text=item.text, logprobs=[]
                )
            )
            out.append(self._event("response.content_part.done", **where, content_index=0,
                                   part=_output_text(item.text)))  # fmt: skip
        elif item.kind == "reasoning":
            out.append(self._event("response.reasoning_text.done", **where, content_index=0, text=item.text))
            out.append(self._event("response.content_part.done", **where, content_index=0,
                                   part={"type": "reasoning_text", "text": item.text}))  # fmt: skip
        else:
            assert item.call is not None
            out.append(self._event("response.function_call_arguments.done", **where, name=item.call.name,
                                   arguments=item.text))  # fmt: skip
        item.status = status
        out.append(self._event("response.output_item.done", output_index=item.index, item=item.as_json()))
        return out

    def _text(self, kind: str, piece: str) -> list[bytes]:
        out = [] if self._open is not None and self._open.kind == kind else self._open_item(kind)
        assert self._open is not None
        self._open.text += piece
        where = self._where(self._open)
        if kind == "message":
            out.append(
                self._event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
            )
        else:
            out.append(self._event("response.reasoning_text.delta", **where, content_index=0, delta=piece))
        return out

    def _call_delta(self, entry: dict[str, Any]) -> list[bytes]:
        index = entry.get("index", 0)
        fn = entry.get("function") or {}
        out: list[bytes] = []
        item = self._calls.get(index)
        if item is None:  # the first delta of a call names it
            call = _Call(entry.get("id") or self._turn.new_id("call_"), fn.get("name") or "", "")
            out += self._open_item("function_call", call)
            item = self._calls[index] = self._items[-1]
        piece = fn.get("arguments") or ""
        if piece:
            item.text += piece
            out.append(
                self._event("response.function_call_arguments.delta", **self._where(item), delta=piece)
            )
        return out
