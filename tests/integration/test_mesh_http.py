"""HTTP to a peer's model server straight over mesh streams (`MeshHttpTransport`).

Two real transports on loopback: node B serves a real FastAPI app under uvicorn on a Unix socket
behind `serve_tcp_streams`, node A's httpx client reaches it through `MeshHttpTransport`, as the proxy
does for a model served by another node. Streaming is checked event by event (the server sends
the next event only once the client has the last), concurrency by a server that answers only
once every request has arrived, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from mesh_llm.api.proxy import Proxy
from mesh_llm.mesh.http_transport import BASE_URL, MeshHttpTransport
from mesh_llm.mesh.tunnel import TunnelCounters, serve_tcp_streams
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import new_mesh
from mesh_llm.serving.local_socket import PrivateSocket
from mesh_llm.transport import MeshTransport, PeerLink, TransportConfig
from tests.serving_view import OneHost

CONCURRENT = 8


@dataclass
class ModelServer:
    """What the app on node B has seen, and the levers a test pulls on it."""

    acks: list[asyncio.Event] = field(default_factory=lambda: [asyncio.Event() for _ in range(5)])
    arrived: int = 0
    all_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends whatever still waits
    left: asyncio.Event = field(default_factory=asyncio.Event)  # /events saw its client go


def _app(state: ModelServer) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(
            body, media_type="application/octet-stream", headers={"x-host": request.headers["host"]}
        )

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                for i, ack in enumerate(state.acks):
                    yield f"data: {i}\n\n".encode()
                    await ack.wait()  # the next event only once the client has this one
                yield b"data: [DONE]\n\n"
            except asyncio.CancelledError:
                state.left.set()
                raise

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.get("/gather")
    async def gather() -> dict[str, int]:
        state.arrived += 1
        if state.arrived == CONCURRENT:
            state.all_arrived.set()
        await state.all_arrived.wait()  # answers only once every request is in
        return {"arrived": state.arrived}

    @app.post("/v1/chat/completions")
    async def cut(request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            await state.release.wait()  # the test takes the node away meanwhile

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.get("/never")
    async def never() -> dict[str, str]:
        await state.release.wait()
        return {}

    return app


@dataclass
class Pair:
    link: PeerLink  # A's link to B
    b: MeshTransport
    served: TunnelCounters  # B's side: one connection per mesh stream
    state: ModelServer

    def transport(self, model: str = "m") -> MeshHttpTransport:
        return MeshHttpTransport(self.link, "http", {"model": model})


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    state = ModelServer()
    # On a Unix socket, as a node's model server listens (serving/local_socket.py).
    listener = PrivateSocket(tmp_path / "run", "m.sock")
    server = uvicorn.Server(uvicorn.Config(_app(state), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener.sock]))
    while not server.started:
        assert not task.done(), "the server stopped during startup"
        await asyncio.sleep(0.01)
    mesh = new_mesh()
    config = TransportConfig(idle_timeout=2.0, keepalive_interval=0.25, close_timeout=0.3)
    a = MeshTransport(NodeIdentity.generate(), mesh, host="127.0.0.1", config=config)
    b = MeshTransport(NodeIdentity.generate(), mesh, host="127.0.0.1", config=config)
    await a.start()
    await b.start()
    served = serve_tcp_streams(
        b, "http", lambda peer, header: listener.path if header.get("model") == "m" else None
    )
    link = await a.dial([f"127.0.0.1:{b.port}"], b.node_id)
    try:
        yield Pair(link, b, served, state)
    finally:
        state.release.set()
        await a.close()
        await b.close()
        server.should_exit = True
        await task
        listener.close()


def _client(transport: httpx.AsyncBaseTransport, read: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=httpx.Timeout(10.0, read=read))


async def test_requests_share_one_kept_alive_stream_and_large_bodies_arrive_whole(pair: Pair) -> None:
    body = os.urandom(3 * 1024 * 1024)
    async with _client(pair.transport()) as client:
        for _ in range(3):
            r = await client.post("/echo", content=body)
            assert r.status_code == 200 and r.content == body
    assert r.headers["x-host"] == "localhost"  # the Host a local client would send
    assert pair.served.connections == 1  # three requests, one mesh stream


async def test_an_event_stream_arrives_event_by_event(pair: Pair) -> None:
    seen: list[str] = []
    async with _client(pair.transport()) as client, client.stream("GET", "/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(10):  # were events held back, the server would wait forever
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen.append(line[6:])
                    if line[6:].isdigit():
                        pair.state.acks[int(line[6:])].set()
    assert seen == ["0", "1", "2", "3", "4", "[DONE]"]


async def test_a_client_that_leaves_mid_stream_is_seen_leaving_by_the_server(pair: Pair) -> None:
    async with _client(pair.transport()) as client:
        async with client.stream("GET", "/events") as r:
            assert b"data: 0" in await anext(r.aiter_raw())
        # Closing the answer half-way resets the stream; the peer drops its connection to the
        # server, which cancels the generation (this is how a model server frees the slot).
        async with asyncio.timeout(10):
            await pair.state.left.wait()
        assert not pair.state.acks[0].is_set()


async def test_concurrent_requests_each_get_a_stream(pair: Pair) -> None:
    async with _client(pair.transport()) as client:
        async with asyncio.timeout(10):  # the server answers only once all of them are in
            answers = await asyncio.gather(*(client.get("/gather") for _ in range(CONCURRENT)))
    assert [r.json() for r in answers] == [{"arrived": CONCURRENT}] * CONCURRENT
    assert pair.served.connections == CONCURRENT


async def test_a_refused_stream_and_a_closed_link_are_errors_before_any_answer(pair: Pair) -> None:
    async with _client(pair.transport("unknown")) as client:
        with pytest.raises(httpx.ReadError):  # the proxy then tries another host
            await client.post("/echo", content=b"x")
    async with _client(pair.transport()) as client:
        pair.link.close("test")
        with pytest.raises(httpx.ConnectError):
            await client.post("/echo", content=b"x")


async def test_a_read_timeout_is_httpx_read_timeout(pair: Pair) -> None:
    async with _client(pair.transport(), read=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/never")


async def test_a_peer_that_goes_away_mid_answer_ends_the_stream_with_a_read_error(pair: Pair) -> None:
    async with _client(pair.transport()) as client, client.stream("POST", "/v1/chat/completions") as r:
        chunks = r.aiter_raw()
        assert b"Hel" in await anext(chunks)
        await pair.b.close()
        with pytest.raises(httpx.ReadError):
            async for _ in chunks:
                pass


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class Answered(httpx.AsyncBaseTransport):
    """Passes requests on to `inner`; `answered` is set once an answer's headers are in."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.answered = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.answered.set()
        return response


async def test_the_proxy_ends_a_stream_cut_by_the_peer_with_an_error_event(pair: Pair) -> None:
    transport = pair.transport()
    answered = Answered(transport)
    proxy = Proxy(OneHost(BASE_URL, transport=answered))
    try:
        app = httpx.ASGITransport(app=proxy.app)
        async with httpx.AsyncClient(transport=app, base_url="http://127.0.0.1:9337") as c:

            async def cut_when_midway() -> None:
                await answered.answered.wait()  # the proxy has begun to relay the stream
                await pair.b.close()

            cutter = asyncio.create_task(cut_when_midway())
            async with asyncio.timeout(10):
                r = await c.post("/v1/chat/completions", json=CHAT)
            await cutter
        assert r.status_code == 200
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "backend_failed" and "incomplete" in error["message"]
        assert "ReadError" in error["message"]
        assert proxy.metrics.requests == {("m", "200"): 1}
    finally:
        await proxy.aclose()
        await transport.aclose()


async def test_the_proxy_answers_503_when_the_peer_refuses(pair: Pair) -> None:
    transport = pair.transport("unknown")
    proxy = Proxy(OneHost(BASE_URL, transport=transport))
    try:
        app = httpx.ASGITransport(app=proxy.app)
        async with httpx.AsyncClient(transport=app, base_url="http://127.0.0.1:9337") as c:
            r = await c.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "model_not_ready" and int(r.headers["retry-after"]) > 0
    finally:
        await proxy.aclose()
        await transport.aclose()
