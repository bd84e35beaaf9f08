"""Anthropic's `POST /v1/messages/count_tokens`: the request's prompt, counted by its host."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh_llm.api.translate import COUNT_PATH, StreamTranslator
from mesh_llm.api.translate.anthropic import anthropic_error, count_tokens_chat
from mesh_llm.http_errors import ApiError

__all__ = ["TokenCounter"]


@dataclass
class _CountTurn:
    chat: dict[str, Any]
    path: str = COUNT_PATH
    fallback: Callable[[], dict[str, Any]] | None = field(default=None)

    def __post_init__(self) -> None:
        self.fallback = self._estimate

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        count = chat.get("prompt_tokens")
        return {"input_tokens": count if isinstance(count, int) else 0}

    def stream(self) -> StreamTranslator:
        raise TypeError("token counts are not streamed")

    def _estimate(self) -> dict[str, Any]:
        # About four characters a token: all a host too old to count tokens leaves us.
        text = json.dumps(self.chat.get("messages"), ensure_ascii=False)
        text += json.dumps(self.chat.get("tools") or [], ensure_ascii=False)
        return {"input_tokens": max(1, len(text) // 4)}


class TokenCounter:
    """The `Translator` of count_tokens: a chat body to count, answered `{"input_tokens": n}`."""

    def begin(self, body: dict[str, Any]) -> _CountTurn:
        return _CountTurn(count_tokens_chat(body))

    def error_body(self, error: ApiError) -> dict[str, Any]:
        return anthropic_error(error)
