"""The one seam that turns errors into HTTP answers: OpenAI's error JSON, for every app we serve.

Every FastAPI app the node creates (the OpenAI proxy, the console with its control routes and
chat relay, the model-server child) calls `install(app)`, and code that answers an error
itself builds the body with `from_exception` or one of the helpers here. So every error a
client sees has one shape, ``{"error": {"message", "type", "param", "code"}}``, and one status:

    raised                                   status  code
    ApiErrorResponse(error)                  error.status (what the route decided)
    RequestRejected (and the engine's
      RequestError)                          its own status and code
    ModelNotFound, UnknownModelError         404     model_not_found
    ModelError (no copy, not readable)       404     model_unavailable
    DownloadError                            502     download_failed
    NoHealthyHost                            503     model_not_ready     (Retry-After)
    BackendError                             503     backend_unavailable (Retry-After)
    ConfigError                              400     invalid_request
    PeerUnreachable                          504     peer_unreachable
    other MeshError                          502     mesh_error
    httpx ReadTimeout, WriteTimeout,
      ConnectTimeout                         504     upstream_timeout
    httpx PoolTimeout                        503     upstream_busy       (Retry-After)
    httpx ConnectError                       502     upstream_unreachable
    other httpx.HTTPError                    502     upstream_failed
    HTTPException 404 / 405 / other          404 unknown_url / 405 method_not_allowed / its own
    RequestValidationError                   400     invalid_value
    anything else                            500     internal_error (traceback logged once)

The last row is a fallback middleware: nothing leaves as a plain-text 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mesh_llm.errors import (
    BackendError,
    ConfigError,
    DownloadError,
    MeshError,
    ModelError,
    ModelNotFound,
    NoHealthyHost,
    PeerUnreachable,
    RequestRejected,
    UnknownModelError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiError:
    """An HTTP error the node returns: status, OpenAI-style body and extra headers."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body: OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, shape: ErrorShape | None = None) -> JSONResponse:
        """This error as a FastAPI response, in OpenAI's shape unless `shape` gives another."""
        body = self.body() if shape is None else shape(self)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


ErrorShape = Callable[[ApiError], dict[str, Any]]
"""Writes an error in another API's shape (Anthropic's, for /v1/messages)."""


class ApiErrorResponse(Exception):
    """Raised inside a route to answer with `error`."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _kind(status: int) -> str:
    return "invalid_request_error" if status < 500 else "server_error"


def _retry(status: int, message: str, code: str, seconds: int = 5) -> ApiError:
    return ApiError(status, message, type="server_error", code=code, headers={"Retry-After": str(seconds)})


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> ApiError:
    """A 400 naming what is wrong with the request."""
    return ApiError(400, message, code=code, param=param)


def too_large(limit: int) -> ApiError:
    """A 413 for a body over `limit` bytes."""
    return ApiError(413, f"The request body is over the limit of {limit} bytes.", code="request_too_large")


def unauthorized() -> ApiError:
    """A 401 asking for the API key."""
    return ApiError(
        401,
        "Missing or wrong API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(message: str) -> ApiError:
    """A 403: this caller may not do that."""
    return ApiError(403, message, code="forbidden")


OPENAI_ROUTES = (
    "This API serves /v1/models, /v1/models/{id}, /v1/chat/completions, /v1/completions, "
    "/v1/responses, /v1/messages and /v1/messages/count_tokens."
)


def not_found_route(path: str, routes: str = OPENAI_ROUTES) -> ApiError:
    """A 404 for a path no route serves; `routes` tells the caller what is served."""
    return ApiError(404, f"Unknown path {path}. {routes}".strip(), code="unknown_url")


def method_not_allowed(method: str, path: str) -> ApiError:
    """A 405 for a known path asked with the wrong method."""
    return ApiError(405, f"Method {method} is not allowed on {path}.", code="method_not_allowed")


def _from_httpx(exc: httpx.HTTPError) -> ApiError:
    name = type(exc).__name__
    if isinstance(exc, httpx.PoolTimeout):
        return _retry(503, f"Too many requests are waiting for the model server ({name}). Retry shortly.",
                      "upstream_busy")  # fmt: skip
    if isinstance(exc, httpx.TimeoutException):  # read, write or connect timeout
        return ApiError(504, f"The model server did not answer in time ({name}).", type="server_error",
                        code="upstream_timeout")  # fmt: skip
    if isinstance(exc, httpx.ConnectError):
        return ApiError(502, f"The model server could not be reached ({name}).", type="server_error",
                        code="upstream_unreachable")  # fmt: skip
    return ApiError(502, f"The connection to the model server failed ({name}).", type="server_error",
                    code="upstream_failed")  # fmt: skip


def from_exception(exc: BaseException) -> ApiError:
    """The single mapping from an exception raised while serving a request to its HTTP error."""
    if isinstance(exc, ApiErrorResponse):
        return exc.error
    if isinstance(exc, RequestRejected):
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else {}
        return ApiError(exc.status, exc.message, _kind(exc.status), exc.code, exc.param, headers)
    if isinstance(exc, ModelNotFound | UnknownModelError):
        return ApiError(404, str(exc), code="model_not_found", param="model")
    if isinstance(exc, NoHealthyHost):
        return _retry(503, str(exc), "model_not_ready", exc.retry_after_s)
    if isinstance(exc, BackendError):
        return _retry(503, f"The model server failed: {exc}. Retry in a few seconds.", "backend_unavailable")
    if isinstance(exc, DownloadError):
        return ApiError(502, str(exc), type="server_error", code="download_failed")
    if isinstance(exc, ModelError):
        return ApiError(404, str(exc), code="model_unavailable", param="model")
    if isinstance(exc, ConfigError):
        return bad_request(str(exc))
    if isinstance(exc, PeerUnreachable):
        return ApiError(504, str(exc), type="server_error", code="peer_unreachable")
    if isinstance(exc, MeshError):
        return ApiError(502, str(exc), type="server_error", code="mesh_error")
    if isinstance(exc, httpx.HTTPError):
        return _from_httpx(exc)
    if isinstance(exc, RequestValidationError):
        return bad_request(f"Invalid request: {_validation_message(exc)}", code="invalid_value")
    return ApiError(500, f"Internal error: {type(exc).__name__}", type="server_error", code="internal_error")


def from_http_exception(
    exc: StarletteHTTPException, method: str, path: str, routes: str = OPENAI_ROUTES
) -> ApiError:
    """A framework HTTPException (no route, wrong method, or one a route raised) as an error body."""
    if exc.status_code == 404:
        return not_found_route(path, routes)
    if exc.status_code == 405:
        return method_not_allowed(method, path)
    return ApiError(
        exc.status_code, str(exc.detail), _kind(exc.status_code), None, None, dict(exc.headers or {})
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
        for d in exc.errors()
        if isinstance(d, dict)
    ]
    return "; ".join(parts) or "invalid request"


def upstream_error(status: int, content: bytes, retry_after: str | None = None) -> ApiError:
    """A backend's error answer as an `ApiError`, whatever its shape (for APIs that rewrite it)."""
    error = from_upstream(status, content)
    if error is not None:
        return error
    found = json.loads(content)["error"]  # from_upstream saw an OpenAI-shaped body
    return error_of(found, status, {"Retry-After": retry_after} if retry_after else {})


def error_of(found: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> ApiError:
    """An OpenAI `error` object (from a body or an SSE error event) as an `ApiError`."""

    def text(key: str) -> str | None:
        value = found.get(key)
        return value if isinstance(value, str) else None

    return ApiError(
        status, text("message") or "error", text("type") or _kind(status), text("code"), text("param"),
        dict(headers or {}),
    )  # fmt: skip


def from_upstream(status: int, content: bytes) -> ApiError | None:
    """A backend's error answer in OpenAI's shape, or None if it is already in that shape.

    A body that is not OpenAI-shaped (FastAPI's 422, a plain-text 500) is turned into one.
    """
    try:
        parsed = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return None  # already in OpenAI's shape: pass it through untouched
    if status == 422 and isinstance(parsed, dict):
        details = parsed.get("detail")
        if isinstance(details, list):
            parts = [
                f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
                for d in details
                if isinstance(d, dict)
            ]
            message = "; ".join(parts) or "invalid request"
        else:
            message = str(details)
        return bad_request(f"Invalid request: {message}", code="invalid_value")
    text = content.decode(errors="replace")[:500]
    if status >= 500:
        return _retry(503, f"The model server failed: {text}", "backend_error")
    return ApiError(status, text or "error from model server")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Fallback:
    """ASGI middleware: an exception no handler took becomes a JSON 500, its traceback logged once.

    It sits inside Starlette's ServerErrorMiddleware, which would answer in plain text and log
    again. Once a response has started nothing can be sent in its place: the exception goes on
    to the server, which logs it (only there) and closes the connection.
    """

    def __init__(self, app: ASGIApp, what: str, shapes: dict[str, ErrorShape]) -> None:
        self.app = app
        self.what = what
        self.shapes = shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error in the %s answering %s %s", self.what, scope.get("method"),
                          scope.get("path"))  # fmt: skip
            error = from_exception(exc)
            shape = shape_for(self.shapes, str(scope.get("path", "")))
            body = json.dumps(error.body() if shape is None else shape(error)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": error.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})


def shape_for(shapes: dict[str, ErrorShape], path: str) -> ErrorShape | None:
    """The error shape of the API that serves `path` (by path prefix), None for OpenAI's."""
    for prefix, shape in shapes.items():
        if path == prefix or path.startswith(prefix + "/"):
            return shape
    return None


def install(
    app: FastAPI, what: str, routes: str = OPENAI_ROUTES, shapes: dict[str, ErrorShape] | None = None
) -> None:
    """Make every error `app` answers an OpenAI error body: one call per FastAPI app we create.

    `what` names the app in the log; `routes` is the hint a 404 for an unknown path gives;
    `shapes` maps path prefixes of other APIs (``/v1/messages``) to their own error shapes.
    """
    shapes = dict(shapes or {})

    async def known(request: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).response(shape_for(shapes, request.url.path))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = from_http_exception(exc, request.method, request.url.path, routes)
        return error.response(shape_for(shapes, request.url.path))

    for kind in (ApiErrorResponse, MeshError, httpx.HTTPError, RequestValidationError):
        app.add_exception_handler(kind, known)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(_Fallback, what=what, shapes=shapes)


async def relay_sse(
    response: httpx.Response, broken: str, code: str = "backend_failed"
) -> AsyncIterator[bytes]:
    """Pass an upstream SSE body through byte for byte; if it breaks, end with an error event.

    `broken` is the event's message, with `{error}` replaced by the failure's type name. A
    stream that breaks before its ``[DONE]`` gets the error event and then ``[DONE]``, so SDKs
    see the error; once ``[DONE]`` has passed nothing more is sent. The upstream response is
    closed either way.
    """
    done = False
    tail = b""  # the last bytes seen, to find a [DONE] split across chunks
    try:
        async for chunk in response.aiter_raw():
            tail = (tail + chunk)[-64:]
            done = done or SSE_DONE in tail
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("upstream stream broke: %r", exc)
        if not done:
            yield sse_error_event(broken.format(error=type(exc).__name__), code)
            yield SSE_DONE + b"\n\n"
        return
    finally:
        await response.aclose()
    if not done:  # the upstream closed cleanly but without finishing the answer
        yield sse_error_event(broken.format(error="EndOfStream"), code)
        yield SSE_DONE + b"\n\n"


SSE_DONE = b"data: [DONE]"


def sse_error_event(message: str, code: str = "backend_failed") -> bytes:
    """A final SSE event telling a streaming client that the answer was cut off."""
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return f"data: {json.dumps(payload)}\n\n".encode()
