"""A chat completion as a Message: content blocks, stop reasons, tool_use ids."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_llm.api.translate import CHAT_PATH, IdFactory
from mesh_llm.api.translate.anthropic._stream import MessagesStream
from mesh_llm.api.translate.anthropic._usage import anthropic_usage


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
            "usage": anthropic_usage(chat.get("usage")),
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
