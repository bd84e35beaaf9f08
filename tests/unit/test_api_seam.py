"""The seam where other APIs meet the chat path: keys, error shapes, translated streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from mesh_llm import http_errors as api_errors
from mesh_llm.api.auth import request_key_matches
from mesh_llm.api.proxy import translated_events
from mesh_llm.api.translate.anthropic import MessagesTranslator
from mesh_llm.api.translate.responses import ResponsesTranslator
from mesh_llm.http_errors import ApiError


def test_either_key_header_is_accepted() -> None:
    assert request_key_matches("Bearer k1", None, "k1")
    assert request_key_matches("", "k1", "k1")
    assert request_key_matches("Bearer wrong", "k1", "k1")  # x-api-key alone is enough
    assert not request_key_matches("", "wrong", "k1")
    assert not request_key_matches("", None, "k1")
    assert not request_key_matches("Basic k1", None, "k1")


def test_error_shapes_are_chosen_by_path_prefix() -> None:
    def shape(error: ApiError) -> dict[str, Any]:
        return {"type": "error"}

    shapes = {"/v1/messages": shape}
    assert api_errors.shape_for(shapes, "/v1/messages") is shape
    assert api_errors.shape_for(shapes, "/v1/messages/count_tokens") is shape
    assert api_errors.shape_for(shapes, "/v1/messagesx") is None
    assert api_errors.shape_for(shapes, "/v1/chat/completions") is None


def test_upstream_errors_keep_their_fields_whatever_the_shape() -> None:
    body = {"error": {"message": "no", "type": "invalid_request_error", "param": "x", "code": "bad"}}
    error = api_errors.upstream_error(400, json.dumps(body).encode(), "2")
    assert (error.status, error.message, error.code, error.param) == (400, "no", "bad", "x")
    assert error.headers == {"Retry-After": "2"}
    plain = api_errors.upstream_error(500, b"boom")
    assert plain.status == 503 and "boom" in plain.message


class _Recorder:
    """A stream translator that writes down what it was given."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        self.seen.append(chunk)
        return [b"fed\n"]

    def end(self) -> list[bytes]:
        self.seen.append("end")
        return [b"end\n"]

    def fail(self, error: ApiError) -> list[bytes]:
        self.seen.append(("fail", error.code, error.message))
        return [b"fail\n"]

    def keepalive(self) -> bytes:
        self.seen.append("keepalive")
        return b"keepalive\n"


async def _all(events: AsyncIterator[bytes]) -> list[bytes]:
    return [e async for e in events]


def _events(*parts: bytes) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return gen()


def _chunk(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


def test_a_translated_stream_ends_once_at_done() -> None:
    rec = _Recorder()
    out = asyncio.run(
        _all(
            translated_events(
                _events(_chunk("a") + _chunk("b"), b": keep-alive\n\n", b"data: [DONE]\n\n"), rec
            )
        )
    )
    assert out == [b"fed\n", b"fed\n", b"keepalive\n", b"end\n"]  # a keep-alive in the API's own shape
    assert rec.seen[-1] == "end" and len(rec.seen) == 4


def test_an_error_event_fails_the_translated_stream_and_nothing_follows() -> None:
    rec = _Recorder()
    error = api_errors.sse_error_event("the host died", "backend_failed")
    out = asyncio.run(
        _all(translated_events(_events(_chunk("a"), error, b"data: [DONE]\n\n", _chunk("late")), rec))
    )
    assert out == [b"fed\n", b"fail\n"]
    assert rec.seen[-1] == ("fail", "backend_failed", "the host died")


def test_garbage_from_the_host_is_not_passed_on() -> None:
    rec = _Recorder()
    out = asyncio.run(
        _all(translated_events(_events(b"data: {nope\n\ndata: [1]\n\n", b"data: [DONE]\n\n"), rec))
    )
    assert out == [b"end\n"]


def test_each_api_has_its_own_keepalive_and_none_carries_the_answer() -> None:
    body = {"model": "m", "stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    ping = MessagesTranslator().begin(body).stream().keepalive()
    assert ping == b'event: ping\ndata: {"type": "ping"}\n\n'  # as Anthropic sends it
    body = {"model": "m", "stream": True, "input": "hi"}
    assert ResponsesTranslator().begin(body).stream().keepalive() == b": keep-alive\n\n"  # a comment
