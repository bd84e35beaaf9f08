"""The start of an answer: keep-alives while a host prefills, and a retry on another host while
the first one has sent no content (it went suspect, or missed the first-content deadline).

A real proxy on a real uvicorn server forwards to two fake hosts of model `m` on loopback: host
`a` opens its stream with the role-only chunk, as the engine does before its prefill, and then
waits for the test; host `b` answers at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from mesh_llm.api.proxy import Proxy
from mesh_llm.api.routing import Endpoint
from mesh_llm.api.upstream import Upstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _chunk(delta: dict[str, Any], host: str) -> bytes:
    body = {
        "id": f"chatcmpl-{host}",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Hosts:
    """Two hosts of `m`: `a` holds its first content until `release` is set; `b` answers at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reached: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
        self.left = asyncio.Event()  # host a's answer was closed before it sent content
        self.app = FastAPI()

        @self.app.post("/{host}/v1/chat/completions")
        async def chat(host: str) -> StreamingResponse:
            self.reached[host].set()
            return StreamingResponse(self._answer(host), media_type="text/event-stream")

    async def _answer(self, host: str) -> AsyncIterator[bytes]:
        yield _chunk({"role": "assistant", "content": ""}, host)
        if host == "a":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.left.set()
                raise
        yield _chunk({"content": f"hello from {host}"}, host)
        yield b"data: [DONE]\n\n"


class TwoHosts:
    """The proxy's view: hosts `a` and `b` of `m` (a first), `a` suspect once `suspect_a` is set."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.suspect_a = False

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("m", "node-a", ready=True, suspect=self.suspect_a),
            Endpoint("m", "node-b", ready=True, in_flight=1),  # busier: `a` is chosen first
        ]

    def model_cards(self) -> list[dict[str, Any]]:
        return [{"id": "m", "object": "model"}]

    async def upstream(self, endpoint: Endpoint) -> Upstream:
        return Upstream(f"{self.base}/{endpoint.node_id[-1]}")

    def note_request(self, model: str) -> None:
        pass

    def begin_request(self, model: str) -> Callable[[], None]:
        return lambda: None

    def note_prefix(self, endpoint: Endpoint, digest: str) -> None:
        pass

    def mesh_problem(self) -> str | None:
        return None


async def _serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the server stopped during startup"
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[Hosts, TwoHosts, Callable[..., Awaitable[str]]]]:
    """Two fake hosts, the proxy's view of them, and `start(**proxy_options)`: a proxy served on
    loopback, returning its URL."""
    hosts = Hosts()
    server, task, port = await _serve(hosts.app)
    servers = [(server, task)]
    view = TwoHosts(f"http://127.0.0.1:{port}")
    made: list[Proxy] = []

    async def start(**kwargs: Any) -> str:
        made.append(Proxy(view, **kwargs))
        server, task, port = await _serve(made[-1].app)
        servers.append((server, task))
        return f"http://127.0.0.1:{port}"

    yield hosts, view, start
    hosts.release.set()
    for p in made:
        await p.aclose()
    for server, task in servers:
        server.should_exit = True
        await task


async def _events(response: httpx.Response) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            yield event


async def test_a_slow_stream_gets_its_headers_and_keepalives_before_its_first_content(mesh: Any) -> None:
    hosts, _view, start = mesh
    url = await start()
    seen: list[bytes] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=CHAT) as r:
            assert r.status_code == 200
            async for event in _events(r):
                seen.append(event)
                if event == b": keep-alive":
                    hosts.release.set()  # the first content may come now
    assert b": keep-alive" in seen
    assert seen.index(b": keep-alive") < len(seen) - 3  # before the role chunk, content, [DONE]
    text = b"\n".join(seen)
    assert b"hello from a" in text and seen[-1] == b"data: [DONE]"
    assert text.count(b'"role"') == 1


async def test_a_stream_waiting_on_a_host_that_turns_suspect_is_answered_by_another(mesh: Any) -> None:
    hosts, view, start = mesh
    url = await start()
    seen: list[bytes] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=CHAT) as r:
            assert r.status_code == 200
            async for event in _events(r):
                seen.append(event)
                if event == b": keep-alive":
                    await hosts.reached["a"].wait()
                    view.suspect_a = True  # its node stopped answering pings
    text = b"\n".join(seen)
    assert b"hello from b" in text and b"hello from a" not in text
    assert text.count(b'"role"') == 1  # the retry is invisible: one opening chunk, from b
    assert seen[-1] == b"data: [DONE]"
    await asyncio.wait_for(hosts.left.wait(), 10)  # host a's request was closed there


async def test_a_missed_first_content_deadline_moves_the_stream_to_the_next_host(mesh: Any) -> None:
    hosts, _view, start = mesh
    url = await start(first_content_s=0.5)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert b"hello from b" in r.content and b"hello from a" not in r.content
    assert hosts.reached["a"].is_set()


async def test_a_whole_answer_from_a_suspect_host_is_retried_on_another(mesh: Any) -> None:
    hosts, view, start = mesh
    url = await start()

    async def turn_suspect() -> None:
        await hosts.reached["a"].wait()
        view.suspect_a = True

    flag = asyncio.create_task(turn_suspect())
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    await flag
    assert r.status_code == 200 and b"hello from b" in r.content  # b's (streamed) body, whole


async def test_a_stream_that_fails_on_every_host_at_once_gets_an_ordinary_503(mesh: Any) -> None:
    _hosts, view, start = mesh
    view.base = "http://127.0.0.1:9"  # nothing listens there: each host fails before answering
    url = await start()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503  # failed within the first second: an ordinary error, no stream
    assert r.json()["error"]["code"] == "model_not_ready"
