"""The console on :3131: status JSON, a live SSE feed of it, and the static UI from console/."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from mesh_llm import http_errors as api_errors
from mesh_llm.api.guard import SESSION_COOKIE, AccessPolicy, is_loopback, session_value
from mesh_llm.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

CONSOLE_ROUTES = "The console serves /, /api/status, /api/events, /api/chat, /api/login and /metrics."
KEEPALIVE_S = 15.0
LOGIN_ATTEMPTS = 5  # wrong keys per client address per window before /api/login answers 429
LOGIN_WINDOW_S = 60.0


class ChangeFeed:
    """A version counter that status readers wait on; bumped whenever the node's state changes."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def bump(self) -> None:
        """Record a change; safe to call from sync code on the event loop thread."""
        self.version += 1
        cond = self._condition()

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        try:
            asyncio.get_running_loop().create_task(notify())
        except RuntimeError:
            pass  # no loop yet: readers will see the new version when they start

    def close(self) -> None:
        self.closed = True
        self.bump()

    async def wait(self, seen: int, timeout: float) -> int:
        """Wait until the version differs from `seen` (or timeout); return the current version."""
        cond = self._condition()
        async with cond:
            if self.version == seen and not self.closed:
                try:
                    await asyncio.wait_for(cond.wait(), timeout)
                except TimeoutError:
                    pass
        return self.version


def assets_dir() -> Path:
    """The console's static files: packaged copy first, then the repo's console/ folder."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_console", here.parent / "console"):
        if (candidate / "index.html").is_file():
            return candidate
    return here.parent / "console"


# The page and its modules change with the package: browsers must revalidate (ETag) rather than
# guess a freshness lifetime from Last-Modified and run a stale script against a newer node.
_REVALIDATE = {"Cache-Control": "no-cache"}


class _RevalidatedFiles(StaticFiles):
    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_REVALIDATE)
        return response


class ChatRelay:
    """Same-origin `POST /api/chat` for the page: forwards to this node's `/v1/chat/completions`.

    The API on :9337 is another origin and sends no CORS headers, so the page talks to the console
    and the console relays, passing status, headers that matter and SSE bytes through unchanged.
    The console's guard admits only callers who hold the node's API key (when one is set), so
    the relay adds that key: the console is never a way around it.
    """

    def __init__(self, status: Callable[[], dict[str, Any]], api_key: str | None) -> None:
        self._status = status
        self._api_key = api_key

    def _target(self) -> str | None:
        api = self._status().get("api") or {}
        url = api.get("url")
        return f"{url}/chat/completions" if url else None

    def _refusal(self, request: Request) -> api_errors.ApiError | None:
        # A JSON content type forces a CORS preflight (which we never answer) on other sites'
        # pages, and a foreign Origin is refused outright: no other page can drive the relay.
        if not request.headers.get("content-type", "").startswith("application/json"):
            return api_errors.bad_request("Send the chat request as application/json.", code="invalid_json")
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            return api_errors.forbidden("Cross-origin requests to the console are refused.")
        return None

    def _headers(self, request: Request) -> dict[str, str]:
        # The console's guard let this request in only with the key (bearer or session), so
        # the caller holds it: pass it on to the API.
        headers = {"content-type": "application/json"}
        if self._api_key is not None:
            headers["authorization"] = f"Bearer {self._api_key}"
        return headers

    async def __call__(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal.response()
        target = self._target()
        if target is None:
            return api_errors.ApiError(
                503,
                "This node serves no API (it is idle). Start it with --model NAME or --join TOKEN to chat.",
                type="server_error",
                code="no_api",
            ).response()
        body = await request.body()
        client = httpx.AsyncClient(timeout=httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=5.0))
        try:
            upstream = await client.send(
                client.build_request("POST", target, content=body, headers=self._headers(request)),
                stream=True,
            )
        except httpx.HTTPError as exc:
            await client.aclose()
            return _relay_failure(exc, f"The node's API at {target} did not answer")
        content_type = upstream.headers.get("content-type", "application/json")
        passed = {
            k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after", "www-authenticate")
        }
        if upstream.status_code == 200 and content_type.startswith("text/event-stream"):
            return StreamingResponse(
                self._relay(upstream, client.aclose),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            content = await upstream.aread()
        except httpx.HTTPError as exc:
            return _relay_failure(exc, "The node's API failed while answering")
        finally:
            await upstream.aclose()
            await client.aclose()
        return Response(content, status_code=upstream.status_code, media_type=content_type, headers=passed)

    @staticmethod
    async def _relay(upstream: httpx.Response, close: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
        try:
            broken = "The connection to the node's API broke mid-answer ({error})."
            async for chunk in api_errors.relay_sse(upstream, broken, code="relay_failed"):
                yield chunk
        finally:
            await close()


def _relay_failure(exc: httpx.HTTPError, what: str) -> JSONResponse:
    """The relay's answer when the node's own API fails: the seam's status, the relay's words."""
    error = api_errors.from_exception(exc)
    code = "api_unreachable" if error.code == "upstream_unreachable" else error.code
    return replace(error, message=f"{what} ({type(exc).__name__}).", code=code).response()


TOKEN_HIDDEN = (
    "hidden: this console has no API key and the caller is not on this machine "
    "(start the node with --api-key, or run `mesh-llm status` on it)"
)


def status_for_caller(status: dict[str, Any], client: str, api_key: str | None) -> dict[str, Any]:
    """The status a caller may see: without an API key, the invite token only on this machine."""
    if api_key is None and not is_loopback(client) and status.get("invite_token"):
        return {**status, "invite_token": None, "invite_token_hidden": TOKEN_HIDDEN}
    return status


def console_policy(api_key: str | None, hosts: frozenset[str]) -> AccessPolicy:
    """The console's access rules: everything but the page and its assets needs the key."""
    return AccessPolicy(
        api_key,
        hosts,
        public=("/", "/favicon.ico"),
        public_prefixes=("/static/",),
        extra_open=frozenset({"/api/login"}),
    )


def create_console_app(
    status: Callable[[], dict[str, Any]],
    feed: ChangeFeed,
    api_key: str | None = None,
    metrics: Callable[[], str] | None = None,
) -> FastAPI:
    """Build the console app around a status source and its change feed.

    Wrap it with `guard.guarded(app, console_policy(...))`: then every caller that reaches a
    route here has the key when one is set. The invite token (and so the mesh secret) goes to
    such callers, or, without a key, to callers on this machine only. The chat relay adds the
    node's key for callers who proved they hold it.
    """
    app = FastAPI(title="mesh-llm console", openapi_url=None, docs_url=None, redoc_url=None)
    api_errors.install(app, "console", CONSOLE_ROUTES)
    static = assets_dir()
    relay = ChatRelay(status, api_key)

    def status_for(request: Request) -> dict[str, Any]:
        return status_for_caller(status(), request.client.host if request.client else "", api_key)

    if metrics is not None:
        render_metrics = metrics

        @app.get("/metrics")
        async def get_metrics() -> Response:
            return Response(render_metrics(), media_type=METRICS_CONTENT_TYPE)

    failures: dict[str, list[float]] = {}  # client address -> times of recent wrong keys

    @app.post("/api/login")
    async def login(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            body = None
        key = body.get("key") if isinstance(body, dict) else None
        if api_key is None:
            return JSONResponse({"ok": True, "auth": False})
        client = request.client.host if request.client else ""
        now = time.monotonic()
        recent = [t for t in failures.get(client, []) if now - t < LOGIN_WINDOW_S]
        if len(recent) >= LOGIN_ATTEMPTS:  # no online guessing of the key
            failures[client] = recent
            return api_errors.ApiError(
                429, "Too many wrong keys; wait a minute.", code="rate_limited",
                headers={"Retry-After": str(int(LOGIN_WINDOW_S))},
            ).response()  # fmt: skip
        if not isinstance(key, str) or not hmac.compare_digest(key.encode(), api_key.encode()):
            failures[client] = [*recent, now]
            if len(failures) > 1024:  # bounded memory under many addresses
                failures.pop(next(iter(failures)))
            return api_errors.unauthorized().response()
        failures.pop(client, None)
        response = JSONResponse({"ok": True, "auth": True})
        response.set_cookie(
            SESSION_COOKIE, session_value(api_key), httponly=True, samesite="strict", path="/"
        )
        return response

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        return await relay(request)

    @app.get("/api/status")
    async def get_status(request: Request) -> JSONResponse:
        return JSONResponse(status_for(request))

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            seen = feed.version
            yield f"event: status\ndata: {json.dumps(status_for(request))}\n\n".encode()
            while not feed.closed:
                current = await feed.wait(seen, KEEPALIVE_S)
                if feed.closed:
                    break
                if current == seen:
                    yield b": keep-alive\n\n"
                    continue
                seen = current
                yield f"event: status\ndata: {json.dumps(status_for(request))}\n\n".encode()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(static / "index.html", headers=_REVALIDATE)

    if static.is_dir():
        app.mount("/static", _RevalidatedFiles(directory=static), name="static")
    return app
