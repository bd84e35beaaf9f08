"""Local control routes on the console port: `mesh-llm drop` and `mesh-llm plan` talk to these.

Errors are OpenAI error bodies, with the status `mesh_llm.http_errors` gives each: the console
app that includes this router installs that seam, so a MeshError from `plan` is answered there
(an unknown model is a 404, a bad argument a 400, and so on).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request

from mesh_llm import http_errors as api_errors
from mesh_llm.api.auth import bearer_matches
from mesh_llm.api.guard import is_loopback
from mesh_llm.http_errors import ApiErrorResponse

_MODEL_BODY = 'The body must be JSON: {"model": NAME}.'


def _local_and_allowed(request: Request, api_key: str | None) -> None:
    """Control changes the node: only this machine may ask, and with the API key when one is set."""
    host = request.client.host if request.client else ""
    if not is_loopback(host):
        raise ApiErrorResponse(api_errors.forbidden("Control requests are only accepted from this machine."))
    if api_key is not None and not bearer_matches(request.headers.get("authorization", ""), api_key):
        raise ApiErrorResponse(api_errors.unauthorized())


def control_router(
    drop: Callable[[str], Awaitable[bool]],
    plan: Callable[[str], dict[str, Any]],
    api_key: str | None = None,
) -> APIRouter:
    """Routes that act on the running node: stop serving a model, preview a split plan."""
    router = APIRouter(prefix="/api")

    @router.post("/drop")
    async def post_drop(request: Request) -> dict[str, str]:
        _local_and_allowed(request, api_key)
        try:
            body = await request.json()
        except (ValueError, RecursionError) as exc:
            raise ApiErrorResponse(api_errors.bad_request(_MODEL_BODY, code="invalid_json")) from exc
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise ApiErrorResponse(
                api_errors.bad_request(_MODEL_BODY, code="missing_required_parameter", param="model")
            )
        if not await drop(model):
            raise ApiErrorResponse(
                api_errors.ApiError(
                    404, f"This node does not serve {model}.", code="model_not_found", param="model"
                )
            )
        return {"dropped": model}

    @router.get("/plan")
    async def get_plan(request: Request, model: str) -> dict[str, Any]:
        _local_and_allowed(request, api_key)
        return plan(model)  # a MeshError is answered by the app's error seam

    return router
