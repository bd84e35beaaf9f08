"""Upstream SSE answers relayed to clients, each ended with an error event if it is cut short."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

import httpx

from mesh_llm import http_errors as api_errors
from mesh_llm.api.exchange import Exchange
from mesh_llm.api.upstream import SHUTTING_DOWN, Started
from mesh_llm.metrics import SseMeter

log = logging.getLogger(__name__)

_BROKEN = "The model server stopped in the middle of the answer ({error}); the answer is incomplete."


class StreamRelay:
    """The streams being relayed now, so that a node that stops can end each of them."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping  # set when the node ends answers still in progress
        self._streams: set[httpx.Response] = set()

    async def close_all(self) -> None:
        """Close every upstream being relayed; each relay then ends with the shutdown event."""
        for response in list(self._streams):
            with contextlib.suppress(httpx.HTTPError):
                await response.aclose()

    async def events(
        self, started: Started, meter: SseMeter, exchange: Exchange, done: Callable[[], None]
    ) -> AsyncGenerator[bytes, None]:
        """Pass SSE events through; if the host dies or this node stops mid-stream, end with an
        error event and ``[DONE]`` (never after a ``[DONE]`` already sent).

        The upstream is read in this task, so a client that hangs up cancels the read, which
        closes the upstream and frees the host's slot. To stop, `close_all` closes the upstream.
        `done` runs last, once the exchange has its token counts.
        """
        loop = asyncio.get_running_loop()
        ended: bytes | None = None
        response = started.response
        self._streams.add(response)
        try:
            try:
                out = meter.feed(started.head, loop.time())
                if out:
                    yield out
                async for chunk in started.rest:
                    out = meter.feed(chunk, loop.time())
                    if out:
                        yield out
            except (asyncio.CancelledError, GeneratorExit):
                if not meter.done:
                    exchange.error = "client_closed_request"  # the client hung up mid-answer
                raise
            except httpx.HTTPError as exc:
                if self._stopping.is_set():
                    exchange.error = "node_shutting_down"
                    ended = api_errors.sse_error_event(SHUTTING_DOWN, "node_shutting_down")
                else:
                    log.warning("upstream stream broke: %r", exc)
                    exchange.error = "backend_failed"
                    ended = api_errors.sse_error_event(_BROKEN.format(error=type(exc).__name__))
            else:
                tail = meter.flush()
                if tail:
                    yield tail
                if not meter.done:  # the upstream closed cleanly but without finishing the answer
                    stopping = self._stopping.is_set()
                    exchange.error = "node_shutting_down" if stopping else "backend_failed"
                    ended = (
                        api_errors.sse_error_event(SHUTTING_DOWN, "node_shutting_down")
                        if stopping
                        else api_errors.sse_error_event(_BROKEN.format(error="EndOfStream"))
                    )
            if ended is not None and not meter.done:
                yield ended
                yield api_errors.SSE_DONE + b"\n\n"
        finally:
            self._streams.discard(response)
            await response.aclose()
            exchange.prompt_tokens = meter.prompt_tokens
            # A stream cut short has no usage chunk: each chunk of text is about one token.
            exchange.completion_tokens = (
                meter.completion_tokens if meter.completion_tokens is not None else meter.token_chunks
            )
            if meter.first_token_at is not None:
                exchange.ttft_s = meter.first_token_at - exchange.started
            done()
