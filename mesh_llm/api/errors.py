"""Map mesh-llm errors to OpenAI's error JSON shape (pure): one table, one function."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from mesh_llm.errors import BackendError, MeshError, ModelNotFound, NoHealthyHost


@dataclass(frozen=True)
class ApiError:
    """An HTTP error the proxy returns: status, OpenAI-style body and extra headers."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request body is over the limit of {limit} bytes.", code="request_too_large")


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Missing or wrong API key. Send it as 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def not_found_route(path: str) -> ApiError:
    return ApiError(
        404,
        f"Unknown path {path}. This API serves /v1/models, /v1/models/{{id}}, /v1/chat/completions "
        "and /v1/completions.",
        code="unknown_url",
    )


def from_exception(exc: Exception) -> ApiError:
    """The single mapping from an exception raised while serving a request to its HTTP error."""
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), code="model_not_found", param="model")
    if isinstance(exc, NoHealthyHost):
        return ApiError(
            503,
            str(exc),
            type="server_error",
            code="model_not_ready",
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    if isinstance(exc, BackendError):
        return ApiError(
            503,
            f"The model server failed: {exc}. Retry in a few seconds.",
            type="server_error",
            code="backend_unavailable",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, MeshError):
        return ApiError(502, str(exc), type="server_error", code="mesh_error")
    return ApiError(500, f"Internal error: {type(exc).__name__}", type="server_error", code="internal_error")


async def relay_sse(response: Any, broken: str, code: str = "backend_failed") -> Any:
    """Pass an upstream SSE body through byte for byte; if it breaks, end with an error event.

    `broken` is the event's message, with `{error}` replaced by the failure's type name. A
    stream that breaks before its ``[DONE]`` gets the error event and then ``[DONE]``, so SDKs
    see the error; once ``[DONE]`` has passed nothing more is sent. The upstream response is
    closed either way. (`response` is an httpx.Response; typed loosely so this module stays
    free of I/O imports.)
    """
    import httpx

    done = False
    tail = b""  # the last bytes seen, to find a [DONE] split across chunks
    try:
        async for chunk in response.aiter_raw():
            tail = (tail + chunk)[-64:]
            done = done or SSE_DONE in tail
            yield chunk
    except httpx.HTTPError as exc:
        logging.getLogger(__name__).warning("upstream stream broke: %r", exc)
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
    import json

    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return f"data: {json.dumps(payload)}\n\n".encode()
