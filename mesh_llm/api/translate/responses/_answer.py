"""One Responses request as chat, and the Response its whole chat answer becomes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_llm.api.translate import CHAT_PATH
from mesh_llm.api.translate.responses._items import (
    Call,
    ResponseFrame,
    call_item,
    message_item,
    reasoning_item,
    response_usage,
)
from mesh_llm.api.translate.responses._stream import ResponsesStream


@dataclass
class ResponsesTurn(ResponseFrame):
    """One Responses request as chat: `chat` to send, and how its answer becomes a Response."""

    chat: dict[str, Any]
    path: str = CHAT_PATH
    fallback: Callable[[], dict[str, Any]] | None = None

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The Response for a whole chat completion."""
        choices = chat.get("choices") or [{}]
        message = choices[0].get("message") or {}
        status = "incomplete" if choices[0].get("finish_reason") == "length" else "completed"
        reasoning = message.get("reasoning_content") or ""
        text = message.get("content") or ""
        calls = [
            Call(
                c.get("id") or self.new_id("call_"),
                (c.get("function") or {}).get("name") or "",
                (c.get("function") or {}).get("arguments") or "",
            )
            for c in message.get("tool_calls") or []
        ]
        output: list[dict[str, Any]] = []
        if reasoning:
            output.append(reasoning_item(self.new_id("rs_"), reasoning, "completed"))
        if text or not calls:
            output.append(message_item(self.new_id("msg_"), text, "completed"))
        output += [call_item(self.new_id("fc_"), c, "completed") for c in calls]
        output[-1]["status"] = status  # a cut-off answer is cut off in its last item
        return self.finish(output, response_usage(chat.get("usage")), status, text, calls)

    def stream(self) -> ResponsesStream:
        """A translator for the streamed chat answer."""
        return ResponsesStream(self)
