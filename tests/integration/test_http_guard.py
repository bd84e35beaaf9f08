"""The HTTP guard and limits on real uvicorn servers on loopback, and the console's access rules
driven in-process (httpx's ASGI transport lets a test choose the caller's address)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from mesh_llm.api.console import ChangeFeed, console_policy, create_console_app
from mesh_llm.api.control import control_router
from mesh_llm.api.guard import LOOPBACK_NAMES, SESSION_COOKIE, AccessPolicy, guarded, host_name
from mesh_llm.api.limits import client_group, limited_protocol

TOKEN = "AQCN-secret-token"


def _status() -> dict[str, Any]:
    return {"state": "serving", "invite_token": TOKEN, "api": {}}


async def _drop(model: str) -> bool:
    return model == "m"


def _plan(model: str) -> dict[str, Any]:
    return {"model": model, "mode": "solo"}


def _console(key: str | None) -> Any:
    app = create_console_app(_status, ChangeFeed(), api_key=key)
    app.include_router(control_router(_drop, _plan, key))
    return guarded(app, console_policy(key, LOOPBACK_NAMES))


def _client(app: Any, address: str = "127.0.0.1", host: str = "127.0.0.1:3131") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


@pytest.mark.parametrize(("key", "auth", "status"), [
    ("k", None, 401), ("k", "Bearer wrong", 401), ("k", "Bearer k", 200), (None, None, 200),
])  # fmt: skip
async def test_console_routes_need_the_key_when_one_is_set(
    key: str | None, auth: str | None, status: int
) -> None:
    headers = {"authorization": auth} if auth else {}
    async with _client(_console(key)) as c:
        assert (await c.get("/api/status", headers=headers)).status_code == status
        assert (await c.get("/api/plan?model=m", headers=headers)).status_code == status
        assert (await c.post("/api/drop", json={"model": "m"}, headers=headers)).status_code == status
        r = await c.post("/api/chat", json={"model": "m", "messages": []}, headers=headers)
        assert (r.status_code == 401) == (status == 401)
        # The page itself and its assets are open: the page is where the key is entered.
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/static/js/app.js")).status_code == 200


async def test_a_session_cookie_from_login_opens_the_console() -> None:
    async with _client(_console("k")) as c:
        assert (await c.post("/api/login", json={"key": "nope"})).status_code == 401
        r = await c.post("/api/login", json={"key": "k"})
        assert r.status_code == 200 and SESSION_COOKIE in r.cookies
        status = await c.get("/api/status")
        assert status.status_code == 200 and status.json()["invite_token"] == TOKEN


async def test_guessing_the_key_is_rate_limited() -> None:
    async with _client(_console("k")) as c:
        codes = [(await c.post("/api/login", json={"key": f"guess{i}"})).status_code for i in range(7)]
        assert codes == [401] * 5 + [429] * 2
        assert (
            await c.post("/api/login", json={"key": "k"})
        ).status_code == 429  # even the right one, for a while


async def test_the_token_is_hidden_from_other_machines_when_no_key_is_set() -> None:
    async with _client(_console(None), address="192.0.2.7", host="127.0.0.1:3131") as c:
        body = (await c.get("/api/status")).json()
        assert body["invite_token"] is None and "hidden" in body["invite_token_hidden"]
    async with _client(_console(None)) as c:
        assert (await c.get("/api/status")).json()["invite_token"] == TOKEN
    async with _client(_console("k"), address="192.0.2.7") as c:  # a key holder may see it from anywhere
        assert (await c.get("/api/status", headers={"authorization": "Bearer k"})).json()[
            "invite_token"
        ] == TOKEN


@pytest.mark.parametrize("host", ["evil.example", "evil.example:3131", "rebind.attacker.test:80", ""])
async def test_foreign_host_headers_are_refused(host: str) -> None:
    async with _client(_console(None), host="127.0.0.1") as c:
        r = await c.get("/api/status", headers={"host": host})
        assert r.status_code == 421 and r.json()["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize("host", ["localhost:3131", "127.0.0.1", "[::1]:3131", "127.0.0.2"])
async def test_this_machines_names_are_accepted(host: str) -> None:
    async with _client(_console(None)) as c:
        assert (await c.get("/api/status", headers={"host": host})).status_code == 200


async def test_state_changes_must_be_same_origin_json() -> None:
    async with _client(_console(None)) as c:
        r = await c.post("/api/drop", content=b'{"model": "m"}', headers={"content-type": "text/plain"})
        assert r.status_code == 415  # what a cross-site <form> or sendBeacon can send without a preflight
        r = await c.post("/api/drop", json={"model": "m"}, headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"
        r = await c.post("/api/chat", json={}, headers={"origin": "null"})
        assert r.status_code == 403


async def test_console_bodies_over_the_limit_are_413s() -> None:
    async with _client(_console(None)) as c:
        r = await c.post(
            "/api/chat", content=b"[" * (2 * 1024 * 1024), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = await c.post("/api/drop", content=b"[" * 50_000, headers={"content-type": "application/json"})
        assert r.status_code == 400  # deep nesting: a clear 400, not a 500


def test_dual_stack_loopback_counts_as_this_machine() -> None:
    from mesh_llm.api.guard import is_loopback

    assert is_loopback("::ffff:127.0.0.1") and is_loopback("127.0.0.9") and is_loopback("::1")
    assert not is_loopback("::ffff:192.0.2.1") and not is_loopback("192.0.2.1") and not is_loopback("x")


def test_host_names_parse() -> None:
    assert (
        host_name("LocalHost:3131") == "localhost"
        and host_name("[::1]:80") == "::1"
        and host_name("::1") == "::1"
    )
    assert not AccessPolicy().host_allowed("localhost.evil.example")


async def _serve(app: Any, **limits: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    config.load()
    config.http_protocol_class = limited_protocol(config.http_protocol_class, **limits)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the server stopped during startup"
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


async def test_slow_headers_are_cut_off_and_busy_connections_are_bounded() -> None:
    app = FastAPI()
    release = asyncio.Event()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/busy")
    async def busy() -> dict[str, str]:
        await release.wait()
        return {"ok": "done"}

    server, task, port = await _serve(app, header_timeout_s=0.3, max_loopback=3)
    try:
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        slow_w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
        await slow_w.drain()
        assert await asyncio.wait_for(slow_r.read(), 5) == b""  # closed by the server
        # A quick client on a keep-alive connection is unaffected.
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://127.0.0.1:{port}/")).status_code == 200
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, w in held:
            w.write(b"GET /busy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await w.drain()
        await asyncio.sleep(0.1)
        extra_r, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(extra_r.read(), 5) == b""  # every connection is busy: refused
        release.set()
        for r, w in held:
            assert b"done" in await asyncio.wait_for(r.read(1000), 5)
            w.close()
    finally:
        server.should_exit = True
        await task


async def test_idle_local_connections_do_not_lock_out_other_local_clients() -> None:
    # The attack: one local process holds 100 idle connections (renewed within the header
    # deadline); every other program on 127.0.0.1 must still get its request through, both
    # under the default loopback bound and once a small one is full (the idle are closed).
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"ok": "yes"}

    for limits in ({}, {"max_loopback": 8}):
        server, task, port = await _serve(app, **limits)
        try:
            hogs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
            await asyncio.sleep(0.05)
            async with httpx.AsyncClient() as c:
                assert (await c.get(f"http://127.0.0.1:{port}/")).status_code == 200
            for _, w in hogs:
                w.close()
        finally:
            server.should_exit = True
            await task


def test_loopback_addresses_are_one_group_and_remote_addresses_their_own() -> None:
    assert client_group("127.0.0.1") == client_group("::1") == client_group("::ffff:127.0.0.5")
    assert client_group("192.0.2.7") == "192.0.2.7" != client_group("127.0.0.1")
    assert client_group("") == ""
