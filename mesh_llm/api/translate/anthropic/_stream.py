"""A streamed chat answer as Anthropic's stream events, one content block open at a time."""

from __future__ import annotations

from typing import Any, Protocol

from mesh_llm.api.translate import ChatChunk, IdFactory, sse_event
from mesh_llm.api.translate.anthropic._errors import anthropic_error
from mesh_llm.api.translate.anthropic._usage import anthropic_usage
from mesh_llm.http_errors import ApiError


class Answering(Protocol):
    """What a stream needs of its turn (a `MessagesTurn`): the model, ids and stop reasons."""

    model: str

    @property
    def new_id(self) -> IdFactory: ...

    def call_id(self, call_id: object) -> str: ...

    def stop(self, finish: object, matched: object, called: bool) -> tuple[str, str | None]: ...


class MessagesStream:
    """Chat chunks in, Anthropic's stream events out, one content block open at a time.

    A block opens when the first piece of its kind arrives (thinking, text, or a tool call with
    a new index) and closes when another kind begins or the answer ends. The usage chunk comes
    last in a chat stream, so `message_start` says 0 input tokens and `message_delta` (whose
    counts SDKs take as the totals) says how many there were.
    """

    def __init__(self, turn: Answering) -> None:
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
        out.append(sse_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": anthropic_usage(self._usage),
        }))  # fmt: skip
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out

    def keepalive(self) -> bytes:
        """A `ping` event, as Anthropic sends while an answer is on its way."""
        return sse_event("ping", {"type": "ping"})

    def fail(self, error: ApiError) -> list[bytes]:
        """An `error` event, as Anthropic ends a stream it cannot finish; nothing follows it."""
        if self._closed:
            return []
        self._closed = True
        return [sse_event("error", anthropic_error(error))]

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
        return [sse_event("message_start", {"type": "message_start", "message": message})]

    def _open_block(self, kind: str, block: dict[str, Any], tool: object = None) -> list[bytes]:
        if self._open == kind and self._tool == tool:
            return []
        out = self._close_block()
        self._index += 1
        self._open, self._tool = kind, tool
        out.append(sse_event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                  "content_block": block}))  # fmt: skip
        return out

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = self._tool = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event(
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
