"""The OpenAI-compatible API on :9337: routes each request by its `model` field to a host."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh_llm.api import errors as api_errors
from mesh_llm.api.auth import request_key_matches
from mesh_llm.api.errors import ApiErrorResponse
from mesh_llm.api.exchange import Exchange, error_code, parse_body, usage_not_asked
from mesh_llm.api.routing import Endpoint, choose, model_key
from mesh_llm.api.translate import StreamTranslator, Translator, Turn
from mesh_llm.api.translate.anthropic import MessagesTranslator
from mesh_llm.api.translate.count_tokens import TokenCounter
from mesh_llm.api.translate.responses import ResponsesTranslator
from mesh_llm.api.upstream import SHUTTING_DOWN, Upstream, UpstreamClient, unless_gone, unless_stopped
from mesh_llm.errors import BackendUnavailable, ModelNotFound, NoHealthyHost
from mesh_llm.metrics import CONTENT_TYPE, Gauge, RequestMetrics, SseMeter, render, usage_of

log = logging.getLogger(__name__)
access_log = logging.getLogger("mesh_llm.access")  # one line per answered request
T = TypeVar("T")


class ServingView(Protocol):
    """What the proxy needs from the node: where models are, and how to reach them."""

    def endpoints(self) -> list[Endpoint]: ...

    def model_cards(self) -> list[dict[str, Any]]: ...

    async def upstream(self, endpoint: Endpoint) -> Upstream:
        """Where `endpoint`'s model server answers, and the transport that reaches it."""
        ...

    def note_request(self, model: str) -> None:
        """Count demand for `model` before routing, so wanted models are seen too."""
        ...

    def begin_request(self, model: str) -> Callable[[], None]:
        """Count a request as in flight; the returned function marks it finished."""
        ...

    def mesh_problem(self) -> str | None:
        """Why this node is not in its mesh yet (it has tokens but no peer), else None."""
        ...


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
        self._client = UpstreamClient(request_timeout_s)
        self._messages = MessagesTranslator()
        self._responses = ResponsesTranslator()
        self._count_tokens = TokenCounter()
        self.app = self._build_app()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _require_key(self, request: Request) -> None:
        if self._api_key is None:
            return
        headers = request.headers
        if not request_key_matches(headers.get("authorization", ""), headers.get("x-api-key"), self._api_key):
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

        # Other APIs ride the chat path: translated here, routed and served as chat.
        @router.post("/responses")
        async def responses(request: Request) -> Response:
            return await self._forward(request, "/v1/responses", "input", self._responses)

        @router.post("/messages")
        async def messages(request: Request) -> Response:
            return await self._forward(request, "/v1/messages", "messages", self._messages)

        @router.post("/messages/count_tokens")
        async def count_tokens(request: Request) -> Response:
            return await self._forward(request, "/v1/messages/count_tokens", "messages", self._count_tokens)

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

        api_errors.install(app, "OpenAI API", shapes={"/v1/messages": self._messages.error_body})
        app.add_middleware(AccessLogged)
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

    async def _forward(
        self, request: Request, path: str, required: str, translator: Translator | None = None
    ) -> Response:
        exchange = Exchange(request.method, path, time.monotonic())
        request.state.access_logged = True  # by `_finish`, with the model, host and tokens
        self._active += 1
        self._idle.clear()
        try:
            response = await self._answer(request, path, required, exchange, translator)
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

    async def _answer(
        self, request: Request, path: str, required: str, exchange: Exchange, translator: Translator | None
    ) -> Response:
        raw = await self._read_body(request)
        body = parse_body(raw, required)
        turn: Turn | None = None
        if translator is not None:
            turn = translator.begin(body)
            body, path = turn.chat, turn.path
            raw = json.dumps(body).encode()
        model: str = body["model"]
        exchange.model = model
        exchange.stream = body.get("stream") is True
        added_usage = False
        if exchange.stream and usage_not_asked(body):
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
            sent = await self._unless_gone(
                self._client.send_first(candidates, self._view.upstream, path, raw), request
            )
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
            events = self._relay(response, finish, meter, exchange)
            return StreamingResponse(
                events if turn is None else _translated(events, turn.stream()),
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
        retry = response.headers.get("retry-after")
        if response.status_code >= 400:
            if turn is not None:
                err = api_errors.upstream_error(response.status_code, content, retry)
                if turn.fallback is not None and err.code == "unknown_url":
                    exchange.status, exchange.error = 200, ""
                    return JSONResponse(turn.fallback())  # a host from before `turn.path` existed
                exchange.fail(err)
                raise ApiErrorResponse(err)  # written in the API's own shape by the app's handler
            rewritten = api_errors.from_upstream(response.status_code, content)
            if rewritten is not None:
                exchange.fail(rewritten)
                return rewritten.response()
            exchange.error = error_code(content)
        else:
            exchange.prompt_tokens, exchange.completion_tokens = usage_of(content)
            if turn is not None:
                return JSONResponse(turn.answer(json.loads(content)))
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
            result = await unless_gone(unless_stopped(work, stopping), request)
        finally:
            stopping.cancel()
        return result

    def _finish(self, exchange: Exchange) -> None:
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

    async def _relay(
        self, response: httpx.Response, finish: Callable[[], None], meter: SseMeter, exchange: Exchange
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
                    ended = api_errors.sse_error_event(SHUTTING_DOWN, "node_shutting_down")
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
                        api_errors.sse_error_event(SHUTTING_DOWN, "node_shutting_down")
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


class AccessLogged:
    """An access-log line for every request `Proxy._forward` does not log itself: the other
    routes, an unknown path (404), a wrong method (405), a missing key (401).

    So a client that calls what this node lacks leaves a trace. Not counted in /metrics, whose
    labels would grow with every path a caller makes up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        exchange = Exchange(scope["method"], path if _printable(path) else repr(path[:200]), time.monotonic())
        error_body = bytearray()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            elif exchange.status >= 400 and len(error_body) < 65536:  # an error body is small
                error_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not scope.get("state", {}).get("access_logged"):
                if not exchange.status:
                    exchange.status, exchange.error = 500, "internal_error"
                elif exchange.status >= 400:
                    exchange.error = error_code(bytes(error_body))
                record = exchange.record(time.monotonic())
                access_log.info(record.line(), extra={"fields": record.fields()})


def _printable(text: str) -> bool:
    """Whether a caller's text can go into a log line as it is (no control characters)."""
    return text.isprintable() and len(text) <= 200


async def _translated(events: AsyncIterator[bytes], stream: StreamTranslator) -> AsyncIterator[bytes]:
    """A chat SSE answer (complete events, as `Proxy._relay` yields them) in another API's events.

    An error event from the host, or the one the relay writes when the host breaks off, ends the
    translated stream through `fail`; nothing follows that or the end of the answer.
    """
    async for data in events:
        for event in data.split(b"\n\n"):
            payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
            if not payload:
                continue
            if payload == b"[DONE]":
                for out in stream.end():
                    yield out
                return
            try:
                chunk = json.loads(payload)
            except (ValueError, RecursionError):
                continue  # the host wrote something that is no event: not the client's to see
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("error"), dict):
                for out in stream.fail(api_errors.error_of(chunk["error"], 502)):
                    yield out
                return
            for out in stream.feed(chunk):
                yield out


_BROKEN = "The model server stopped in the middle of the answer ({error}); the answer is incomplete."
