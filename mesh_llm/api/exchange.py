"""What one proxied request is: its checked body, and the access-log record of its answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mesh_llm import http_errors as api_errors
from mesh_llm.http_errors import ApiErrorResponse
from mesh_llm.metrics import RequestRecord

__all__ = ["Exchange", "error_code", "parse_body", "usage_not_asked"]


def parse_body(raw: bytes, required: str) -> dict[str, Any]:
    """The request body as a JSON object with a `model` and the `required` field, else a 400."""
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


def usage_not_asked(body: dict[str, Any]) -> bool:
    """True if a streamed request did not ask for the usage chunk."""
    options = body.get("stream_options")
    if options is None:
        return True
    return isinstance(options, dict) and not options.get("include_usage")


def error_code(content: bytes) -> str:
    """The `code` (else `type`) of an upstream's error body, for the access log."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return "error"
    return str(error.get("code") or error.get("type") or "error") if isinstance(error, dict) else "error"


@dataclass
class Exchange:
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
