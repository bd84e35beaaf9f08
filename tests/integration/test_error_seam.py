"""Every error the node's HTTP apps answer is an OpenAI error body with the right status.

Real apps throughout: the proxy forwards to a real upstream on loopback (one that never
answers, one that is gone), the console and its control routes run with real callbacks, and
the real uvicorn server shows what a client sees on the wire when a route raises.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from mesh_llm import http_errors as api_errors
from mesh_llm.api.console import ChangeFeed, create_console_app
from mesh_llm.api.control import control_router
from mesh_llm.api.proxy import Proxy
from mesh_llm.errors import ConfigError, UnknownModelError
from tests.serving_view import OneHost

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


async def _serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the server stopped during startup"
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


@pytest.fixture
async def silent_upstream() -> AsyncIterator[str]:
    """A model server that takes requests and never answers (until the test ends)."""
    app = FastAPI()
    release = asyncio.Event()

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, str]:
        await release.wait()
        return {}

    server, task, port = await _serve(app)
    yield f"http://127.0.0.1:{port}"
    release.set()
    server.should_exit = True
    await task


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _proxy_client(proxy: Proxy) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy.app), base_url="http://127.0.0.1:9337")


async def test_an_upstream_that_never_answers_is_a_504(silent_upstream: str) -> None:
    proxy = Proxy(OneHost(silent_upstream), request_timeout_s=0.2)
    try:
        async with await _proxy_client(proxy) as c:
            r = await c.post("/v1/chat/completions", json=CHAT)
        _assert_openai_error(r, 504, "upstream_timeout")
        assert "ReadTimeout" in r.json()["error"]["message"]
        assert proxy.metrics.requests == {("m", "504"): 1}  # the access log and /metrics agree
    finally:
        await proxy.aclose()


async def test_an_upstream_that_is_gone_is_a_503_to_retry() -> None:
    proxy = Proxy(OneHost(f"http://127.0.0.1:{_closed_port()}"))
    try:
        async with await _proxy_client(proxy) as c:
            r = await c.post("/v1/chat/completions", json=CHAT)
        _assert_openai_error(r, 503, "model_not_ready")
        assert int(r.headers["retry-after"]) > 0
    finally:
        await proxy.aclose()


async def test_the_proxy_answers_unknown_routes_and_wrong_methods_in_json() -> None:
    proxy = Proxy(OneHost("http://127.0.0.1:1"))
    try:
        async with await _proxy_client(proxy) as c:
            _assert_openai_error(await c.get("/v1/nothing-here"), 404, "unknown_url")
            _assert_openai_error(await c.get("/v1/chat/completions"), 405, "method_not_allowed")
            _assert_openai_error(await c.post("/v1/chat/completions", content=b"{"), 400, "invalid_json")
    finally:
        await proxy.aclose()


async def test_every_request_to_the_proxy_gets_one_access_line(caplog: pytest.LogCaptureFixture) -> None:
    proxy = Proxy(OneHost("http://127.0.0.1:1"), api_key="k")
    key = {"authorization": "Bearer k"}
    try:
        with caplog.at_level(logging.INFO, logger="mesh_llm.access"):
            async with await _proxy_client(proxy) as c:
                await c.get("/v1/nothing%0Aforged line", headers=key)  # decoded: a newline
                await c.get("/v1/chat/completions", headers=key)
                await c.post("/v1/chat/completions", json=CHAT)  # no key: a 401 before `_forward`
                await c.post("/v1/chat/completions", content=b"{", headers=key)  # `_forward` logs it
                await c.get("/health")
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "mesh_llm.access"]
    finally:
        await proxy.aclose()
    assert [line.split(" duration=")[0] for line in lines] == [
        "GET '/v1/nothing\\nforged line' model=- host=- status=404 tokens=?+? ttft=-",
        "GET /v1/chat/completions model=- host=- status=405 tokens=?+? ttft=-",
        "POST /v1/chat/completions model=- host=- status=401 tokens=?+? ttft=-",
        "POST /v1/chat/completions model=- host=- status=400 tokens=?+? ttft=-",
        "GET /health model=- host=- status=200 tokens=?+? ttft=-",
    ]
    assert [line.split(" error=")[-1] for line in lines[:4]] == [
        "unknown_url", "method_not_allowed", "invalid_api_key", "invalid_json",
    ]  # fmt: skip


async def test_an_exception_in_a_route_is_a_json_500_on_the_wire_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("a bug")

    proxy = Proxy(OneHost("http://127.0.0.1:1", cards=broken))
    server, task, port = await _serve(proxy.app)
    uvicorn_log = logging.getLogger("uvicorn")  # uvicorn's loggers do not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.ERROR):
            async with httpx.AsyncClient() as c:
                r = await c.get(f"http://127.0.0.1:{port}/v1/models")
        _assert_openai_error(r, 500, "internal_error")
        assert "RuntimeError" in r.json()["error"]["message"] and "a bug" not in r.text
        tracebacks = [rec for rec in caplog.records if rec.exc_info]
        assert len(tracebacks) == 1 and "a bug" in str(tracebacks[0].exc_info[1])  # type: ignore[index]
    finally:
        uvicorn_log.removeHandler(caplog.handler)
        server.should_exit = True
        await task
        await proxy.aclose()


def _plan(model: str) -> dict[str, Any]:
    if model == "bad":
        raise ConfigError("that plan needs --split")
    if model == "crash":
        raise RuntimeError("a bug in planning")
    raise UnknownModelError(f"{model} is neither in the catalog nor a .gguf path")


async def _drop(model: str) -> bool:
    return False


def _console(status: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    app = create_console_app(status or (lambda: {"state": "idle", "api": {}}), ChangeFeed())
    app.include_router(control_router(_drop, _plan))
    return app


def _console_client(app: FastAPI, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:3131")


async def test_control_routes_give_each_error_its_own_status() -> None:
    async with _console_client(_console()) as c:
        _assert_openai_error(await c.get("/api/plan", params={"model": "nope"}), 404, "model_not_found")
        _assert_openai_error(await c.get("/api/plan", params={"model": "bad"}), 400, "invalid_request")
        _assert_openai_error(await c.get("/api/plan", params={"model": "crash"}), 500, "internal_error")
        _assert_openai_error(await c.get("/api/plan"), 400, "invalid_value")  # no ?model=
        _assert_openai_error(await c.post("/api/drop", json={"model": "x"}), 404, "model_not_found")
        _assert_openai_error(await c.post("/api/drop", content=b"[1"), 400, "invalid_json")
        _assert_openai_error(await c.post("/api/drop", json={}), 400, "missing_required_parameter")
    async with _console_client(_console(), address="10.1.2.3") as c:
        _assert_openai_error(await c.post("/api/drop", json={"model": "x"}), 403, "forbidden")


async def test_the_console_answers_unknown_routes_wrong_methods_and_bugs_in_json() -> None:
    def status() -> dict[str, Any]:
        raise RuntimeError("status broke")

    async with _console_client(_console(status)) as c:
        _assert_openai_error(await c.get("/api/nothing"), 404, "unknown_url")
        _assert_openai_error(await c.delete("/api/status"), 405, "method_not_allowed")
        _assert_openai_error(await c.get("/static/missing.js"), 404, "unknown_url")
        _assert_openai_error(await c.get("/api/status"), 500, "internal_error")


async def test_the_chat_relay_maps_a_silent_api_and_a_gone_api(silent_upstream: str) -> None:
    gone = f"http://127.0.0.1:{_closed_port()}/v1"
    async with _console_client(_console(lambda: {"api": {"url": gone}})) as c:
        r = await c.post("/api/chat", json=CHAT)
    _assert_openai_error(r, 502, "api_unreachable")
    # The relay's own read timeout is long; a proxy in front of the silent host times out first.
    proxy = Proxy(OneHost(silent_upstream), request_timeout_s=0.2)
    server, task, port = await _serve(proxy.app)
    try:
        async with _console_client(_console(lambda: {"api": {"url": f"http://127.0.0.1:{port}/v1"}})) as c:
            r = await c.post("/api/chat", json=CHAT)
        _assert_openai_error(r, 504, "upstream_timeout")
    finally:
        server.should_exit = True
        await task
        await proxy.aclose()


async def test_install_makes_any_app_answer_in_json() -> None:
    app = FastAPI()
    api_errors.install(app, "test app", "This app serves /ok.")

    @app.get("/ok")
    async def ok(request: Request) -> dict[str, str]:
        if request.query_params.get("fail") == "pool":
            raise httpx.PoolTimeout("no connection free")
        if request.query_params.get("fail") == "connect":
            raise httpx.ConnectError("refused")
        return {"ok": "yes"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/ok")).json() == {"ok": "yes"}
        error = _assert_openai_error(await c.get("/elsewhere"), 404, "unknown_url")
        assert "This app serves /ok." in error["message"]
        r = await c.get("/ok", params={"fail": "pool"})
        _assert_openai_error(r, 503, "upstream_busy")
        assert int(r.headers["retry-after"]) > 0
        _assert_openai_error(await c.get("/ok", params={"fail": "connect"}), 502, "upstream_unreachable")
