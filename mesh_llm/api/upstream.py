"""Sending a request to a model's host: over its Unix socket to a server on this machine, over
the mesh to another node's, on to the next host while none has answered yet, and giving up on it when the
client leaves or the node stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from fastapi import Request

from mesh_llm import http_errors as api_errors
from mesh_llm.api.routing import Endpoint
from mesh_llm.errors import MeshError, NoHealthyHost
from mesh_llm.http_errors import ApiErrorResponse

__all__ = ["SHUTTING_DOWN", "Started", "Upstream", "UpstreamClient", "unless_gone", "unless_stopped"]

log = logging.getLogger(__name__)

# Errors that mean "this host never produced a byte of the answer": safe to try another host.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
_VIA = "mesh_llm.via"  # the request extension naming the transport that reaches the host
SUSPECT_CHECK_S = 0.5  # how often a host still silent is checked for suspicion and its deadline
ABANDON_WAIT_S = 2.0  # closing a request to a frozen host must not hold up the retry
T = TypeVar("T")

SHUTTING_DOWN = (
    "This mesh-llm node is shutting down; the answer is incomplete. Retry: another node of the mesh "
    "may serve the model, or this one once it is back."
)


@dataclass(frozen=True)
class Upstream:
    """Where one host's model server answers: a base URL, and the transport that reaches it
    (a local model server's Unix-socket transport, a `MeshHttpTransport`; None: plain TCP)."""

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
        *,
        suspect: Callable[[Endpoint], bool] = lambda endpoint: False,
        first_content_s: float | None = None,
    ) -> Started:
        """POST `raw` to the first host that answers with content; move on only while none has.

        A host is left for the next one when it fails before its first content, when its node
        turns suspect (it stopped answering pings) while another candidate is not, or when its
        first content takes longer than `first_content_s` (None: no such deadline). Leaving it
        closes the request there, which frees its slot. The body is streamed: the caller reads
        the rest from `Started.rest` and closes `Started.response`.
        """
        last = "no host"
        for i, endpoint in enumerate(candidates):
            others = any(not e.suspect and not suspect(e) for e in candidates[i + 1 :])
            attempt = asyncio.ensure_future(self._attempt(endpoint, upstream, path, raw))
            try:
                why = await _watch(attempt, endpoint, suspect if others else None, first_content_s)
            except (MeshError, *_RETRYABLE) as exc:
                why = f"{type(exc).__name__}: {exc}"
            except BaseException:
                await _abandon(attempt)
                raise
            if isinstance(why, Started):
                return why
            log.warning(
                "host %s for %s failed before answering: %s", endpoint.node_id[:8], endpoint.model, why
            )
            last = why
        raise NoHealthyHost(candidates[0].model, f"every host failed before answering ({last})")

    async def _attempt(
        self, endpoint: Endpoint, upstream: Callable[[Endpoint], Awaitable[Upstream]], path: str, raw: bytes
    ) -> Started:
        target = await upstream(endpoint)
        request = self._client.build_request(
            "POST",
            target.base_url + path,
            content=raw,
            headers={"content-type": "application/json"},
            extensions={_VIA: target.transport} if target.transport is not None else None,
        )
        response = await self._client.send(request, stream=True)
        try:
            head, rest = await _first_content(response)
        except BaseException:
            await response.aclose()
            raise
        return Started(endpoint, response, head, rest)


@dataclass(frozen=True)
class Started:
    """A host's answer from its first content on: `head` is what it sent up to and including
    that content (keep-alives and the role-only opening chunk of a chat stream come before it);
    `rest` goes on reading the body where `head` ended."""

    endpoint: Endpoint
    response: httpx.Response
    head: bytes
    rest: AsyncIterator[bytes]


async def _watch(
    attempt: asyncio.Future[Started],
    endpoint: Endpoint,
    suspect: Callable[[Endpoint], bool] | None,
    first_content_s: float | None,
) -> Started | str:
    """`attempt`'s answer, or (with `attempt` ended) why the host was given up on before it."""
    loop = asyncio.get_running_loop()
    deadline = None if first_content_s is None else loop.time() + first_content_s
    while True:
        wait = SUSPECT_CHECK_S if deadline is None else max(0.0, min(SUSPECT_CHECK_S, deadline - loop.time()))
        done, _ = await asyncio.wait({attempt}, timeout=wait)
        if done:
            return attempt.result()
        if suspect is not None and suspect(endpoint):
            await _abandon(attempt)
            return "its node stopped answering pings"
        if deadline is not None and loop.time() >= deadline:
            await _abandon(attempt)
            return f"no first content within {first_content_s:g} s"


async def _abandon(attempt: asyncio.Future[Started]) -> None:
    """Cancel `attempt` (closing its request) without waiting long on a host that may be frozen."""
    attempt.cancel()
    await asyncio.wait({attempt}, timeout=ABANDON_WAIT_S)
    if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
        await attempt.result().response.aclose()  # it answered just as it was left


async def _first_content(response: httpx.Response) -> tuple[bytes, AsyncIterator[bytes]]:
    """Read `response` up to its first content: for a chat or completion stream, the first event
    that is more than a keep-alive or the role-only opening chunk; for any other body, its first
    bytes (or its end)."""
    rest = response.aiter_raw()
    stream = response.status_code == 200 and response.headers.get("content-type", "").startswith(
        "text/event-stream"
    )
    held = b""
    async for chunk in rest:
        held += chunk
        if not stream or any(_is_content(e) for e in held.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]):
            break
    return held, rest


def _is_content(event: bytes) -> bool:
    """Whether one complete SSE event carries any of the answer (an error and `[DONE]` do)."""
    payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    if not payload:
        return False  # a comment: a keep-alive
    try:
        chunk = json.loads(payload)
    except (ValueError, RecursionError):
        return True
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list) or not choices or "error" in chunk:
        return True
    return not all(_opening(choice) for choice in choices)


def _opening(choice: Any) -> bool:
    """A chat choice that only opens the assistant's turn (`{"role": "assistant", "content": ""}`)."""
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    delta = choice.get("delta")
    return isinstance(delta, dict) and set(delta) <= {"role", "content"} and not delta.get("content")


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
