"""A chat answer in Responses' shapes: the Response, its output items, usage, the replayed turn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_llm.api.translate import IdFactory
from mesh_llm.api.translate.responses._store import Message, ResponseStore
from mesh_llm.http_errors import ApiError


@dataclass
class Call:
    """One tool call of the answer, as its `function_call` item carries it."""

    call_id: str
    name: str
    arguments: str


def response_usage(raw: object) -> dict[str, Any] | None:
    """A Response's usage from chat's (None when the host sent none)."""
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


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [output_text(text)] if text is not None else []
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def call_item(item_id: str, call: Call, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call.call_id, "name": call.name,
            "arguments": call.arguments, "status": status}  # fmt: skip


def assistant_turn(text: str, calls: list[Call]) -> Message:
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


def error_code(error: ApiError) -> str:
    # A Response's `error.code` is one of OpenAI's fixed names; the message keeps the detail.
    if error.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= error.status < 500 else "server_error"


@dataclass
class ResponseFrame:
    """What every state of one Response shares (id, model, the request's echoed fields), and
    where its finished conversation is kept."""

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
        calls: list[Call],
    ) -> dict[str, Any]:
        """The final Response; stores the chain when the request asked for it."""
        if self.keep is not None:
            self.keep.put(self.response_id, [*self.conversation, assistant_turn(text, calls)])
        return self.response(status, output, usage)
