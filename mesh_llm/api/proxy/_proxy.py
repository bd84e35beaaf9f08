"""The `Proxy`: owns the API's app and its forwarding client, and answers each request."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from mesh_llm import http_errors as api_errors
from mesh_llm.api.auth import request_key_matches
from mesh_llm.api.exchange import Exchange, error_code, parse_body, usage_not_asked
from mesh_llm.api.prefix import prefix_digest
from mesh_llm.api.proxy._access_log import AccessLogged, access_log
from mesh_llm.api.proxy._patient import PATIENCE_S, cancel_sending, is_sse, patient_events, whole
from mesh_llm.api.proxy._relay import StreamRelay
from mesh_llm.api.proxy._translated import translated_events
from mesh_llm.api.routing import Endpoint, choose, model_key
from mesh_llm.api.translate import Translator, Turn
from mesh_llm.api.translate.anthropic import MessagesTranslator
from mesh_llm.api.translate.count_tokens import TokenCounter
from mesh_llm.api.translate.responses import ResponsesTranslator
from mesh_llm.api.upstream import (
    Started,
    Upstream,
    UpstreamClient,
    unless_gone,
    unless_stopped,
)
from mesh_llm.errors import BackendUnavailable, ModelNotFound, NoHealthyHost
from mesh_llm.http_errors import ApiErrorResponse
from mesh_llm.metrics import CONTENT_TYPE, Gauge, RequestMetrics, SseMeter, render, usage_of
from mesh_llm.settings import node_default

T = TypeVar("T")


def _sse(events: AsyncIterator[bytes], turn: Turn | None) -> StreamingResponse:
    """A streamed answer: chat SSE as it is, or in the API of `turn`."""
    return StreamingResponse(
        events if turn is None else translated_events(events, turn.stream()),
        status_code=200,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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

    def note_prefix(self, endpoint: Endpoint, digest: str) -> None:
        """A request whose prefix digest is `digest` went to `endpoint` (affinity for its next turn)."""
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
        first_content_s: float | None = None,
        max_body_bytes: int = int(node_default("max_body_mb") * 1024 * 1024),
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
        self._relay = StreamRelay(self._stopping)  # upstream answers being relayed as SSE
        self._max_body = max_body_bytes
        self._api_key = api_key
        self._rotation = itertools.count()
        self._client = UpstreamClient(request_timeout_s)
        self._first_content_s = first_content_s  # a stream's host gets this long for its first content
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
        prefix = prefix_digest(body)  # the conversation, so its next turns find the host holding it
        try:
            candidates = choose(model, self._view.endpoints(), rotation=next(self._rotation), prefix=prefix)
        except ModelNotFound as exc:
            problem = self._view.mesh_problem()
            if problem is None:
                raise
            # Not "no such model": this node cannot see the mesh's models yet.
            raise NoHealthyHost(model, f"this node has not reached its mesh yet ({problem})") from exc
        exchange.model = candidates[0].model
        finish = self._view.begin_request(candidates[0].model)
        sending = asyncio.ensure_future(
            self._client.send_first(
                candidates, self._view.upstream, path, raw, suspect=self._suspect,
                first_content_s=self._first_content_s if exchange.stream else None,
            )
        )  # fmt: skip
        try:
            # A stream whose first content is slow gets its headers now and keep-alives meanwhile.
            patience = PATIENCE_S if exchange.stream else None
            waited = await self._unless_gone(asyncio.wait({sending}, timeout=patience), request)
            started = sending.result() if waited is not None and sending.done() else None
        except BaseException:
            await cancel_sending(sending)
            finish()
            raise
        meter = SseMeter(drop_usage=added_usage)

        def done() -> None:
            finish()
            self._finish(exchange)

        def begun(started: Started) -> None:
            """The host that sent the first content: the one the log and prefix affinity name."""
            if prefix is not None:
                self._view.note_prefix(started.endpoint, prefix)
            exchange.host, exchange.local = started.endpoint.node_id[:8], started.endpoint.local

        if waited is None:  # the client left before the answer started
            await cancel_sending(sending)
            finish()
            exchange.status, exchange.error = 499, "client_closed_request"
            return Response(status_code=499)
        if started is None:
            exchange.status = 200
            events = patient_events(sending, begun, self._relay, self._stopping, meter, exchange, done)
            return _sse(events, turn)
        begun(started)
        response = started.response
        exchange.status = response.status_code
        if is_sse(response):
            return _sse(self._relay.events(started, meter, exchange, done), turn)
        try:
            content = await self._unless_gone(whole(started), request)
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

    def _suspect(self, endpoint: Endpoint) -> bool:
        """Whether the routing table, as it is now, holds `endpoint`'s node suspect."""
        return any(
            e.suspect
            for e in self._view.endpoints()
            if e.node_id == endpoint.node_id and e.model == endpoint.model
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
        await self._relay.close_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), end_s)
        return cut
