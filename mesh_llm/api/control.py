"""Local control routes on the console port: `mesh-llm drop` and `mesh-llm plan` talk to these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from mesh_llm.api.auth import bearer_matches
from mesh_llm.api.guard import is_loopback
from mesh_llm.errors import MeshError


def _local_and_allowed(request: Request, api_key: str | None) -> None:
    """Control changes the node: only this machine may ask, and with the API key when one is set."""
    host = request.client.host if request.client else ""
    if not is_loopback(host):
        raise HTTPException(403, "control requests are only accepted from this machine")
    if api_key is not None and not bearer_matches(request.headers.get("authorization", ""), api_key):
        raise HTTPException(401, "missing or wrong API key")


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
            raise HTTPException(400, 'body must be JSON: {"model": NAME}') from exc
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise HTTPException(400, 'body must be JSON: {"model": NAME}')
        if not await drop(model):
            raise HTTPException(404, f"this node does not serve {model}")
        return {"dropped": model}

    @router.get("/plan")
    async def get_plan(request: Request, model: str) -> dict[str, Any]:
        _local_and_allowed(request, api_key)
        try:
            return plan(model)
        except MeshError as exc:
            raise HTTPException(404, str(exc)) from exc

    return router
