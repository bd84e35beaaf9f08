"""The transport's background tasks and callbacks: none dies silently, all stop on close."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mesh_llm.errors import TransportError
from mesh_llm.transport._codes import StreamCode
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter, Stream

log = logging.getLogger("mesh_llm.transport")

MessageHandler = Callable[[str, dict[str, Any]], object]
StreamHandler = Callable[[str, dict[str, Any], MeshStreamReader, MeshStreamWriter], Awaitable[None]]


class TaskSet:
    """Tasks the transport started: a failure is logged, and `cancel_all` ends them together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, awaitable: Awaitable[Any], name: str | None = None) -> None:
        task = asyncio.ensure_future(awaitable)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transport task %s failed", task.get_name(), exc_info=task.exception())

    def notify(self, callback: Callable[..., object] | None, *args: Any) -> None:
        """Call `callback(*args)`; an awaitable it returns runs as a task. Errors are logged."""
        if callback is None:
            return
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                self.spawn(result, name=f"callback {getattr(callback, '__name__', 'callback')}")
        except Exception:
            log.exception("transport callback %r failed", callback)

    async def cancel_all(self, timeout: float) -> None:
        """Cancel every task and wait up to `timeout` for them to finish."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)


async def serve_stream(peer_id: str, stream: Stream, handler: StreamHandler, header: dict[str, Any]) -> None:
    """Run an incoming stream's handler; close, stop or reset the stream as it ends."""
    try:
        await handler(peer_id, header, stream.reader, stream.writer)
    except asyncio.CancelledError:
        stream.abort(StreamCode.CANCELLED, "stream handler cancelled")
        raise
    except Exception:
        log.exception("handler for stream %r from %s failed", stream.kind, peer_id[:8])
        stream.abort(StreamCode.HANDLER_FAILED, "stream handler failed")
    else:
        stream.writer.close()
        if not stream.reader.finished:
            # Nobody will read the rest: tell the peer instead of letting it block on credit.
            stream.conn.stop_stream(stream.id, StreamCode.CANCELLED)
            stream.reader.fail(TransportError("stream handler finished"))
