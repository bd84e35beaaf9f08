"""The OpenAI-compatible API on :9337: routes each request by its `model` field to a host."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from mesh_llm.api import errors as api_errors
from mesh_llm.api.auth import bearer_matches
from mesh_llm.api.errors import ApiErrorResponse
from mesh_llm.api.routing import Endpoint, choose, model_key
from mesh_llm.errors import BackendUnavailable, MeshError, ModelNotFound, NoHealthyHost
from mesh_llm.metrics import CONTENT_TYPE, Gauge, RequestMetrics, RequestRecord, SseMeter, render, usage_of

log = logging.getLogger(__name__)
access_log = logging.getLogger("mesh_llm.access")  # one line per answered request
T = TypeVar("T")

# Errors that mean "this host never produced a byte of the answer": safe to try another host.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)


class ServingView(Protocol):
    """What the proxy needs from the node: where models are, and how to reach them."""

    def endpoints(self) -> list[Endpoint]: ...

    def model_cards(self) -> list[dict[str, Any]]: ...

    async def base_url(self, endpoint: Endpoint) -> str: ...

    def note_request(self, model: str) -> None:
        """Count demand for `model` before routing, so wanted models are seen too."""
        ...

    def begin_request(self, model: str) -> Callable[[], None]:
        """Count a request as in flight; the returned function marks it finished."""
        ...

    def mesh_problem(self) -> str | None:
        """Why this node is not in its mesh yet (it has tokens but no peer), else None."""
        ...


def _parse_body(raw: bytes, required: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON, a 5,000-digit number, 50,000-deep nesting
        raise ApiErrorResponse(
            api_errors.bad_request(f"The request body is not valid JSON: {exc}", code="invalid_json")
        ) from exc
    if not isinstance(body, dict):
        raise ApiErrorResponse(
            api_errors.bad_request("The request body must be a JSON object.", code="invalid_json")
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiErrorResponse(
            api_errors.bad_request(
                "Missing required parameter: 'model' (a string).",
                code="missing_required_parameter",
                param="model",
            )
        )
    if required not in body:
        raise ApiErrorResponse(
            api_errors.bad_request(
                f"Missing required parameter: '{required}'.",
                code="missing_required_parameter",
                param=required,
            )
        )
    if required == "messages" and (not isinstance(body["messages"], list) or not body["messages"]):
        raise ApiErrorResponse(
            api_errors.bad_request(
                "'messages' must be a non-empty array.", code="invalid_value", param="messages"
            )
        )
    return body


async def _unless_gone(work: Awaitable[T], request: Request) -> T | None:
    """The result of `work`, or None (with `work` cancelled) if the client hangs up first.

    The request body is already read, so the only message left to receive is the disconnect.
    Cancelling an httpx send or read closes its upstream connection, which is how the model
    server learns to free the slot.
    """

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError, MeshError):
        await task
    return None


class Proxy:
    """Owns the forwarding HTTP client and the FastAPI app for the OpenAI API."""

    def __init__(
        self,
        view: ServingView,
        *,
        api_key: str | None = None,
        request_timeout_s: float = 600.0,
        max_body_bytes: int = 8 * 1024 * 1024,
        gauges: Callable[[], list[Gauge]] = list,
        status: Callable[[Request], dict[str, Any]] | None = None,
    ) -> None:
        self._view = view
        self._gauges = gauges
        self._status = status
        self.metrics = RequestMetrics()
        self._active = 0
        self._stopping = asyncio.Event()  # set when the node ends answers still in progress
        self._idle = asyncio.Event()  # set while no request is being answered
        self._idle.set()
        self._streams: set[httpx.Response] = set()  # upstream answers being relayed as SSE
        self._max_body = max_body_bytes
        self._api_key = api_key
        self._rotation = itertools.count()
        # Nagle's algorithm would hold the request body back until the headers are ACKed;
        # with delayed ACKs that costs tens of ms per request on loopback.
        transport = httpx.AsyncHTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(connect=5.0, read=request_timeout_s, write=30.0, pool=30.0),
        )
        self.app = self._build_app()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _require_key(self, request: Request) -> None:
        if self._api_key is None:
            return
        if not bearer_matches(request.headers.get("authorization", ""), self._api_key):
            raise ApiErrorResponse(api_errors.unauthorized())

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="mesh-llm OpenAI API", openapi_url=None, docs_url=None, redoc_url=None)
        router = APIRouter(prefix="/v1", dependencies=[Depends(self._require_key)])

        @router.get("/models")
        async def list_models() -> dict[str, Any]:
            return {"object": "list", "data": self._view.model_cards()}

        @router.get("/models/{model_id:path}")
        async def get_model(model_id: str) -> dict[str, Any]:
            for card in self._view.model_cards():
                if model_key(card["id"]) == model_key(model_id):
                    return card
            raise ApiErrorResponse(
                api_errors.ApiError(
                    404, f"The model '{model_id}' does not exist here.", code="model_not_found", param="model"
                )
            )

        @router.post("/chat/completions")
        async def chat_completions(request: Request) -> Response:
            return await self._forward(request, "/v1/chat/completions", "messages")

        @router.post("/completions")
        async def completions(request: Request) -> Response:
            return await self._forward(request, "/v1/completions", "prompt")

        app.include_router(router)

        @app.get("/metrics", dependencies=[Depends(self._require_key)])
        async def metrics() -> Response:
            return PlainTextResponse(render(self.metrics, self._gauges()), media_type=CONTENT_TYPE)

        if self._status is not None:
            status = self._status

            @app.get("/api/status", dependencies=[Depends(self._require_key)])
            async def get_status(request: Request) -> dict[str, Any]:
                return status(request)

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        api_errors.install(app, "OpenAI API")
        return app

    async def _read_body(self, request: Request) -> bytes:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            raise ApiErrorResponse(api_errors.too_large(self._max_body))
        parts: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise ApiErrorResponse(api_errors.too_large(self._max_body))
            parts.append(chunk)
        return b"".join(parts)

    async def _forward(self, request: Request, path: str, required: str) -> Response:
        exchange = _Exchange(request.method, path, time.monotonic())
        self._active += 1
        self._idle.clear()
        try:
            response = await self._answer(request, path, required, exchange)
        except ApiErrorResponse as exc:
            exchange.fail(exc.error)
            self._finish(exchange)
            raise
        except Exception as exc:  # answered by the app's error handlers, as `from_exception` says
            if isinstance(exc, NoHealthyHost):
                exchange.model = exc.model  # the mesh's name for it, not the caller's spelling
            exchange.fail(api_errors.from_exception(exc))
            self._finish(exchange)
            raise
        except BaseException:
            exchange.status, exchange.error = 500, "internal_error"
            self._finish(exchange)
            raise
        if not isinstance(response, StreamingResponse):
            self._finish(exchange)
        return response

    async def _answer(self, request: Request, path: str, required: str, exchange: _Exchange) -> Response:
        raw = await self._read_body(request)
        body = _parse_body(raw, required)
        model: str = body["model"]
        exchange.model = model
        exchange.stream = body.get("stream") is True
        added_usage = False
        if exchange.stream and _usage_not_asked(body):
            # Ask the host for the usage chunk (the access log and /metrics count tokens) and
            # leave it out of the answer, which then reads exactly as the client asked.
            options = {**(body.get("stream_options") or {}), "include_usage": True}
            raw = json.dumps({**body, "stream_options": options}).encode()
            added_usage = True
        self._view.note_request(model)
        try:
            candidates = choose(model, self._view.endpoints(), rotation=next(self._rotation))
        except ModelNotFound as exc:
            problem = self._view.mesh_problem()
            if problem is None:
                raise
            # Not "no such model": this node cannot see the mesh's models yet.
            raise NoHealthyHost(model, f"this node has not reached its mesh yet ({problem})") from exc
        exchange.model = candidates[0].model
        finish = self._view.begin_request(candidates[0].model)
        try:
            sent = await self._unless_gone(self._send_first(candidates, path, raw), request)
        except BaseException:
            finish()
            raise
        if sent is None:  # the client left before the answer started
            finish()
            exchange.status, exchange.error = 499, "client_closed_request"
            return Response(status_code=499)
        endpoint, response = sent
        exchange.host, exchange.local = endpoint.node_id[:8], endpoint.local
        exchange.status = response.status_code
        if (
            response.headers.get("content-type", "").startswith("text/event-stream")
            and response.status_code == 200
        ):
            meter = SseMeter(drop_usage=added_usage)
            return StreamingResponse(
                self._relay(response, finish, meter, exchange),
                status_code=200,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            content = await self._unless_gone(response.aread(), request)
            if content is None:  # the client left: closing the upstream cancels the generation
                exchange.status, exchange.error = 499, "client_closed_request"
                return Response(status_code=499)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"the model server of {model} failed while answering ({type(exc).__name__})"
            ) from exc
        finally:
            await response.aclose()
            finish()
        if response.status_code >= 400:
            err = api_errors.from_upstream(response.status_code, content)
            if err is not None:
                exchange.fail(err)
                return err.response()
            exchange.error = _error_code(content)
        else:
            exchange.prompt_tokens, exchange.completion_tokens = usage_of(content)
        retry = response.headers.get("retry-after")
        return Response(
            content,
            status_code=response.status_code,
            media_type=response.headers.get("content-type", "application/json"),
            headers={"Retry-After": retry} if retry else None,
        )

    async def _unless_gone(self, work: Awaitable[T], request: Request) -> T | None:
        """`work`'s result, None if the client hung up first; a 503 if the node is stopping."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            result = await _unless_gone(_unless_stopped(work, stopping), request)
        finally:
            stopping.cancel()
        return result

    def _finish(self, exchange: _Exchange) -> None:
        self._active -= 1
        if not self._active:
            self._idle.set()
        record = exchange.record(time.monotonic())
        self.metrics.observe(record)
        access_log.info(record.line(), extra={"fields": record.fields()})

    # ---- shutdown ----------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Requests being answered now (streams included)."""
        return self._active

    async def drain(self, grace_s: float, end_s: float = 3.0) -> int:
        """Let answers in progress finish for up to `grace_s`, then end the rest with an error.

        Streams still running get an SSE error event and ``[DONE]``; requests still waiting
        for a whole answer get a 503. Returns how many were ended that way.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        cut = self._active
        self._stopping.set()
        for response in list(self._streams):  # each relay then ends with the shutdown event
            with contextlib.suppress(httpx.HTTPError):
                await response.aclose()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), end_s)
        return cut

    async def _send_first(
        self, candidates: list[Endpoint], path: str, raw: bytes
    ) -> tuple[Endpoint, httpx.Response]:
        """Send to the first host that accepts; move on only while nothing has been received."""
        last: Exception | None = None
        for endpoint in candidates:
            try:
                base = await self._view.base_url(endpoint)
                upstream = self._client.build_request(
                    "POST", base + path, content=raw, headers={"content-type": "application/json"}
                )
                return endpoint, await self._client.send(upstream, stream=True)
            except (MeshError, *_RETRYABLE) as exc:
                log.warning(
                    "host %s for %s failed before answering: %s", endpoint.node_id[:8], endpoint.model, exc
                )
                last = exc
        raise NoHealthyHost(
            candidates[0].model, f"every host failed before answering ({type(last).__name__})"
        )

    async def _relay(
        self, response: httpx.Response, finish: Callable[[], None], meter: SseMeter, exchange: _Exchange
    ) -> AsyncIterator[bytes]:
        """Pass SSE events through; if the host dies or this node stops mid-stream, end with an
        error event and ``[DONE]`` (never after a ``[DONE]`` already sent).

        The upstream is read in this task, so a client that hangs up cancels the read, which
        closes the upstream and frees the host's slot. To stop, `drain` closes the upstream.
        """
        loop = asyncio.get_running_loop()
        ended: bytes | None = None
        self._streams.add(response)
        try:
            try:
                async for chunk in response.aiter_raw():
                    out = meter.feed(chunk, loop.time())
                    if out:
                        yield out
            except (asyncio.CancelledError, GeneratorExit):
                if not meter.done:
                    exchange.error = "client_closed_request"  # the client hung up mid-answer
                raise
            except httpx.HTTPError as exc:
                if self._stopping.is_set():
                    exchange.error = "node_shutting_down"
                    ended = api_errors.sse_error_event(_SHUTTING_DOWN, "node_shutting_down")
                else:
                    log.warning("upstream stream broke: %r", exc)
                    exchange.error = "backend_failed"
                    ended = api_errors.sse_error_event(_BROKEN.format(error=type(exc).__name__))
            else:
                tail = meter.flush()
                if tail:
                    yield tail
                if not meter.done:  # the upstream closed cleanly but without finishing the answer
                    stopping = self._stopping.is_set()
                    exchange.error = "node_shutting_down" if stopping else "backend_failed"
                    ended = (
                        api_errors.sse_error_event(_SHUTTING_DOWN, "node_shutting_down")
                        if stopping
                        else api_errors.sse_error_event(_BROKEN.format(error="EndOfStream"))
                    )
            if ended is not None and not meter.done:
                yield ended
                yield api_errors.SSE_DONE + b"\n\n"
        finally:
            self._streams.discard(response)
            await response.aclose()
            finish()
            exchange.prompt_tokens = meter.prompt_tokens
            # A stream cut short has no usage chunk: each chunk of text is about one token.
            exchange.completion_tokens = (
                meter.completion_tokens if meter.completion_tokens is not None else meter.token_chunks
            )
            if meter.first_token_at is not None:
                exchange.ttft_s = meter.first_token_at - exchange.started
            self._finish(exchange)


_BROKEN = "The model server stopped in the middle of the answer ({error}); the answer is incomplete."
_SHUTTING_DOWN = (
    "This mesh-llm node is shutting down; the answer is incomplete. Retry: another node of the mesh "
    "may serve the model, or this one once it is back."
)


async def _unless_stopped(work: Awaitable[T], stopping: asyncio.Future[Any]) -> T:
    """`work`'s result, or a 503 (with `work` cancelled) once the node begins to stop."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():  # stopping, or we were cancelled (the client left): end `work` too
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError, MeshError):
                await task
    if not stopping.done() or not task.cancelled():
        return task.result()
    raise ApiErrorResponse(
        api_errors.ApiError(
            503, _SHUTTING_DOWN.replace("; the answer is incomplete", ""), type="server_error",
            code="node_shutting_down", headers={"Retry-After": "5"},
        )
    )  # fmt: skip


def _usage_not_asked(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return True
    return isinstance(options, dict) and not options.get("include_usage")


def _error_code(content: bytes) -> str:
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return "error"
    return str(error.get("code") or error.get("type") or "error") if isinstance(error, dict) else "error"


@dataclass
class _Exchange:
    """What the access log will say about a request, filled in as it is answered."""

    method: str
    path: str
    started: float
    model: str = "-"
    host: str = ""
    local: bool = False
    status: int = 0
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    error: str = ""

    def fail(self, error: api_errors.ApiError) -> None:
        self.status, self.error = error.status, error.code or error.type

    def record(self, now: float) -> RequestRecord:
        return RequestRecord(
            self.method, self.path, self.model, self.host, self.local, self.status, self.stream,
            self.prompt_tokens, self.completion_tokens, self.ttft_s, now - self.started, self.error,
        )  # fmt: skip
