"""Sending a request to a model's host: over TCP to a server on this machine, over the mesh to
another node's, on to the next host while none has answered yet, and giving up on it when the
client leaves or the node stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from fastapi import Request

from mesh_llm import http_errors as api_errors
from mesh_llm.api.routing import Endpoint
from mesh_llm.errors import MeshError, NoHealthyHost
from mesh_llm.http_errors import ApiErrorResponse

__all__ = ["SHUTTING_DOWN", "Upstream", "UpstreamClient", "unless_gone", "unless_stopped"]

log = logging.getLogger(__name__)

# Errors that mean "this host never produced a byte of the answer": safe to try another host.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
_VIA = "mesh_llm.via"  # the request extension naming the transport that reaches the host
T = TypeVar("T")

SHUTTING_DOWN = (
    "This mesh-llm node is shutting down; the answer is incomplete. Retry: another node of the mesh "
    "may serve the model, or this one once it is back."
)


@dataclass(frozen=True)
class Upstream:
    """Where one host's model server answers: a base URL, and the transport that reaches it
    (None: plain TCP to a server on this machine; else, say, a `MeshHttpTransport`)."""

    base_url: str
    transport: httpx.AsyncBaseTransport | None = None


class _ByUpstream(httpx.AsyncBaseTransport):
    """Hands each request to the transport its `Upstream` named, TCP when it named none."""

    def __init__(self, tcp: httpx.AsyncBaseTransport) -> None:
        self._tcp = tcp

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        via = request.extensions.get(_VIA)
        transport = via if isinstance(via, httpx.AsyncBaseTransport) else self._tcp
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._tcp.aclose()  # the others belong to whoever made them (the mesh)


class UpstreamClient:
    """The proxy's HTTP client to model servers, local and remote alike."""

    def __init__(self, request_timeout_s: float) -> None:
        # Nagle's algorithm would hold the request body back until the headers are ACKed;
        # with delayed ACKs that costs tens of ms per request on loopback.
        tcp = httpx.AsyncHTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )
        self._client = httpx.AsyncClient(
            transport=_ByUpstream(tcp),
            timeout=httpx.Timeout(connect=5.0, read=request_timeout_s, write=30.0, pool=30.0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send_first(
        self,
        candidates: list[Endpoint],
        upstream: Callable[[Endpoint], Awaitable[Upstream]],
        path: str,
        raw: bytes,
    ) -> tuple[Endpoint, httpx.Response]:
        """POST `raw` to the first host that accepts; move on only while nothing has been received.

        The response is streamed: the caller reads and closes it.
        """
        last: Exception | None = None
        for endpoint in candidates:
            try:
                target = await upstream(endpoint)
                request = self._client.build_request(
                    "POST",
                    target.base_url + path,
                    content=raw,
                    headers={"content-type": "application/json"},
                    extensions={_VIA: target.transport} if target.transport is not None else None,
                )
                return endpoint, await self._client.send(request, stream=True)
            except (MeshError, *_RETRYABLE) as exc:
                log.warning(
                    "host %s for %s failed before answering: %s", endpoint.node_id[:8], endpoint.model, exc
                )
                last = exc
        raise NoHealthyHost(
            candidates[0].model, f"every host failed before answering ({type(last).__name__})"
        )


async def unless_gone(work: Awaitable[T], request: Request) -> T | None:
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


async def unless_stopped(work: Awaitable[T], stopping: asyncio.Future[Any]) -> T:
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
            503, SHUTTING_DOWN.replace("; the answer is incomplete", ""), type="server_error",
            code="node_shutting_down", headers={"Retry-After": "5"},
        )
    )  # fmt: skip
