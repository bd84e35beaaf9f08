"""Errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""

from __future__ import annotations

from typing import Any

from mesh_llm.http_errors import ApiError


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status (as its API documents them)."""
    named = {
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
    if status in named:
        return named[status]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error(error: ApiError) -> dict[str, Any]:
    """`error` in Anthropic's error shape; the HTTP status stays `error.status`."""
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}
