"""The start of a streamed answer: keep-alives while no host has sent content, then the answer.

`send_first` (in `mesh_llm.api.upstream`) may leave a host for another until the first content
arrives; the client meanwhile sees only keep-alives from this node, so a retry stays invisible.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from mesh_llm import http_errors as api_errors
from mesh_llm.api.exchange import Exchange
from mesh_llm.api.proxy._relay import StreamRelay
from mesh_llm.api.proxy._translated import KEEPALIVE
from mesh_llm.api.upstream import SHUTTING_DOWN, Started
from mesh_llm.metrics import SseMeter

PATIENCE_S = 1.0  # a stream's first content may take this long before its headers go out alone
KEEPALIVE_S = 5.0  # then a keep-alive goes out this often until it comes
_DONE = api_errors.SSE_DONE + b"\n\n"


def is_sse(response: httpx.Response) -> bool:
    """Whether a host answered with a stream (any other answer is read whole)."""
    return response.status_code == 200 and response.headers.get("content-type", "").startswith(
        "text/event-stream"
    )


async def whole(started: Started) -> bytes:
    """The rest of a host's answer read to its end, after what `send_first` already read."""
    return started.head + b"".join([chunk async for chunk in started.rest])


async def cancel_sending(sending: asyncio.Future[Any]) -> None:
    """End a `send_first` not yet done (it closes its request to the host, quickly)."""
    if not sending.done():
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sending
    elif not sending.cancelled() and sending.exception() is None:
        await sending.result().response.aclose()


async def patient_events(
    sending: asyncio.Future[Started],
    begun: Callable[[Started], None],
    relay: StreamRelay,
    stopping_event: asyncio.Event,
    meter: SseMeter,
    exchange: Exchange,
    done: Callable[[], None],
) -> AsyncIterator[bytes]:
    """A stream whose host has sent no content yet: keep-alives until it does, then its answer.

    Until then `send_first` may still leave a host for another, unseen by the client. If every
    host fails, or the node stops, the stream ends with an error event and ``[DONE]``.
    """
    stopping = asyncio.ensure_future(stopping_event.wait())
    waiting: set[asyncio.Future[Any]] = {sending, stopping}
    relayed = False
    try:
        while not sending.done():
            yield KEEPALIVE
            await asyncio.wait(waiting, timeout=KEEPALIVE_S)
            if not sending.done() and stopping_event.is_set():
                exchange.error = "node_shutting_down"
                yield api_errors.sse_error_event(SHUTTING_DOWN, "node_shutting_down") + _DONE
                return
        try:
            started = sending.result()
        except Exception as exc:  # the errors the app's handlers map, written as an SSE event
            error = api_errors.from_exception(exc)
            exchange.error = error.code or "internal_error"
            yield api_errors.sse_error_event(error.message, exchange.error) + _DONE
            return
        begun(started)
        response = started.response
        if not is_sse(response):  # the host refused the request: its error, as an event
            try:
                content = await whole(started)
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            error = api_errors.upstream_error(response.status_code, content)
            exchange.error = error.code or "backend_failed"
            yield api_errors.sse_error_event(error.message, exchange.error) + _DONE
            return
        relayed = True
        async with contextlib.aclosing(relay.events(started, meter, exchange, done)) as events:
            async for out in events:
                yield out
    except (asyncio.CancelledError, GeneratorExit):
        if not relayed:
            exchange.error = "client_closed_request"
        raise
    finally:
        stopping.cancel()
        if not relayed:
            await cancel_sending(sending)
            done()
