"""A streamed chat answer as the Responses event sequence (see the package's docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh_llm.api.translate import ChatChunk, sse_event
from mesh_llm.api.translate.responses._items import (
    Call,
    ResponseFrame,
    call_item,
    error_code,
    message_item,
    output_text,
    reasoning_item,
    response_usage,
)
from mesh_llm.http_errors import ApiError


@dataclass
class _Item:
    """One output item while it streams: its text is reasoning, answer text or call arguments."""

    kind: str  # reasoning | message | function_call
    id: str
    index: int
    text: str = ""
    call: Call | None = None
    status: str = "in_progress"

    def as_json(self) -> dict[str, Any]:
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text if self.status != "in_progress" else "", self.status)
        if self.kind == "message":
            return message_item(self.id, self.text if self.status != "in_progress" else None, self.status)
        assert self.call is not None
        return call_item(self.id, Call(self.call.call_id, self.call.name, self.text), self.status)


class ResponsesStream:
    """Chat chunks in, Responses events out; every event numbered from 0 in the order sent."""

    def __init__(self, turn: ResponseFrame) -> None:
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
        calls = [Call(i.call.call_id, i.call.name, i.text) for i in self._items if i.call is not None]
        response = self._turn.finish(output, response_usage(self._usage), status, text, calls)
        return [*out, self._event(f"response.{status}", response=response)]

    def keepalive(self) -> bytes:
        """An SSE comment: the Responses API has no keep-alive event, and clients skip comments."""
        return b": keep-alive\n\n"

    def fail(self, error: ApiError) -> list[bytes]:
        """`response.failed` with the error; nothing is sent after it."""
        if self._over:
            return []
        out = self._start()
        self._over = True
        if self._open is not None:
            self._open.status = "incomplete"
        output = [item.as_json() for item in self._items]
        failure = {"code": error_code(error), "message": error.message}
        response = self._turn.response("failed", output, response_usage(self._usage), failure)
        return [*out, self._event("response.failed", response=response)]

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse_event(kind, event)

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        response = self._turn.response("in_progress", [])
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]  # fmt: skip

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    def _open_item(self, kind: str, call: Call | None = None) -> list[bytes]:
        out = self._close("completed")
        prefix = {"reasoning": "rs_", "message": "msg_", "function_call": "fc_"}[kind]
        item = _Item(kind, self._turn.new_id(prefix), len(self._items), call=call)
        self._items.append(item)
        self._open = item
        out.append(self._event("response.output_item.added", output_index=item.index, item=item.as_json()))
        if kind != "function_call":
            part = output_text("") if kind == "message" else {"type": "reasoning_text", "text": ""}
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
                                   part=output_text(item.text)))  # fmt: skip
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
            call = Call(entry.get("id") or self._turn.new_id("call_"), fn.get("name") or "", "")
            out += self._open_item("function_call", call)
            item = self._calls[index] = self._items[-1]
        piece = fn.get("arguments") or ""
        if piece:
            item.text += piece
            out.append(
                self._event("response.function_call_arguments.delta", **self._where(item), delta=piece)
            )
        return out
