"""Other APIs on the chat path: OpenAI Responses and Anthropic Messages, translated at one seam.

Every API a node serves reaches a model server as one Chat Completions request, so all three
share the routing, slots, prompt reuse, grammar, cancellation and errors of the chat path, and a
node forwards to hosts of any version (they all speak chat). The proxy (`mesh_llm.api.proxy`)
is the only caller:

    client body ──Translator.begin──▶ Turn ──.chat──▶ chat body ──▶ route to a host (as for chat)
    chat answer ──Turn.answer──▶ the API's answer (or, for COUNT_PATH, a token count)
    chat SSE chunks ──Turn.stream().feed/end/fail──▶ the API's SSE events
    waiting for the first chunk ──Turn.stream().keepalive──▶ the API's keep-alive event
    ApiError ──Translator.error_body──▶ the API's error shape

Translators are pure: no HTTP, no clock or randomness except through what they are given.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from mesh_llm.http_errors import ApiError

__all__ = [
    "CHAT_PATH",
    "COUNT_PATH",
    "ChatChunk",
    "IdFactory",
    "StreamTranslator",
    "Translator",
    "Turn",
    "random_id",
    "sse_event",
]

CHAT_PATH = "/v1/chat/completions"
COUNT_PATH = "/mesh/count_tokens"
"""The model server's route that renders and tokenizes a chat body: `{"prompt_tokens": n}`."""

ChatChunk = dict[str, Any]
"""One parsed `chat.completion.chunk` (or the usage-only chunk with `"choices": []`)."""


class StreamTranslator(Protocol):
    """Turns one streamed chat answer into the API's server-sent events (complete event bytes)."""

    def feed(self, chunk: ChatChunk) -> list[bytes]:
        """The events for one chat chunk (often none: e.g. held until a block can be opened)."""
        ...

    def end(self) -> list[bytes]:
        """The closing events once the chat stream sent `[DONE]` after its last chunk."""
        ...

    def fail(self, error: ApiError) -> list[bytes]:
        """The closing events when the chat stream broke or sent an error event mid-answer."""
        ...

    def keepalive(self) -> bytes:
        """An event that only says the answer is still coming (while a host prefills): it carries
        none of the answer and may come before its first event."""
        ...


class Turn(Protocol):
    """One request of the API, translated: the chat body to send and how to read its answer."""

    chat: dict[str, Any]
    """The Chat Completions body (with `model`, `messages`, `stream` and, when streaming,
    `stream_options.include_usage: true`)."""

    path: str
    """The host's route that takes `chat`: `CHAT_PATH`, or `COUNT_PATH` to count its tokens."""

    fallback: Callable[[], dict[str, Any]] | None
    """The answer when the host is too old to have `path` (it answers 404), or None."""

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The API's whole answer from the chat completion the host returned (status 200)."""
        ...

    def stream(self) -> StreamTranslator:
        """A translator for the streamed chat answer."""
        ...


class Translator(Protocol):
    """One API served over the chat path. Raises `ApiErrorResponse` for bad requests."""

    def begin(self, body: dict[str, Any]) -> Turn:
        """Check one request body (already parsed JSON, an object) and translate it to chat."""
        ...

    def error_body(self, error: ApiError) -> dict[str, Any]:
        """`error` in the API's own error shape (the HTTP status stays `error.status`)."""
        ...


IdFactory = Callable[[str], str]
"""Makes a fresh id with the given prefix (`msg_`, `resp_`, `toolu_` ...); tests pass a seeded one."""


def random_id(prefix: str) -> str:
    """The node's `IdFactory`: `prefix` and 24 random hex digits."""
    return prefix + secrets.token_hex(12)


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event carrying `data` as JSON, as the translators write them."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
