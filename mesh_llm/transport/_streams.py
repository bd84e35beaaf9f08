"""Mesh streams: typed, bidirectional byte streams over one QUIC stream each, with their own credit.

Each data stream starts with one frame {"t": "_open", "kind", "header"}, then raw bytes both
ways. The receiver grants credit as the application reads (see _credit.py), so a slow reader
stalls its writer instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from mesh_llm.errors import TransportError
from mesh_llm.transport._codes import StreamCode, code_name
from mesh_llm.transport._credit import ReceiveCredit, SendCredit

log = logging.getLogger("mesh_llm.transport")


class StreamHost(Protocol):
    """What a stream needs of its connection."""

    peer_id: str | None
    remote_address: str

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def send_credit(self, stream_id: int, limit: int) -> None: ...
    def reset_stream(self, stream_id: int, code: int) -> None: ...
    def stop_stream(self, stream_id: int, code: int) -> None: ...
    def forget_stream(self, stream_id: int) -> None: ...


def wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def fresh(exc: TransportError) -> TransportError:
    # Re-raising one stored instance from many places chains tracebacks onto it; raise a copy.
    return type(exc)(*exc.args)


class Stream:
    """What a stream's reader and writer share: the connection, the id, and teardown."""

    def __init__(
        self, conn: StreamHost, stream_id: int, kind: str, recv_window: int, send_window: int
    ) -> None:
        self.conn = conn
        self.id = stream_id
        self.kind = kind
        self.reader = MeshStreamReader(self, recv_window)
        self.writer = MeshStreamWriter(self, send_window)

    def maybe_forget(self) -> None:
        if self.reader.finished and self.writer.finished:
            self.conn.forget_stream(self.id)

    def abort(self, code: StreamCode, reason: str) -> None:
        """End both directions now: RESET_STREAM our side, STOP_SENDING theirs."""
        if not self.writer.finished:
            self.conn.reset_stream(self.id, code)
        if not self.reader.finished:
            self.conn.stop_stream(self.id, code)
        exc = TransportError(reason)
        self.reader.fail(exc, discard=True)
        self.writer.fail(exc)


class StreamSink(Protocol):
    """Where a mesh stream delivers its bytes after `MeshStreamReader.forward(sink)`."""

    def stream_data(self, data: bytes) -> None:
        """Bytes from the peer, in order; must not block."""

    def stream_eof(self) -> None:
        """The peer finished sending (after the last stream_data)."""

    def stream_failed(self, exc: TransportError) -> None:
        """The stream broke (reset, connection lost); nothing more will come."""


class MeshStreamReader:
    """The receiving half of a mesh stream: `read`, `readexactly`, `at_eof` as on asyncio's.

    The peer may send at most one window beyond what has been read here, so memory stays
    bounded however slow the reader is. Reads have no deadline of their own: if the peer dies
    the connection's idle timeout fails them within seconds; add `asyncio.timeout` for
    application-level deadlines. Instead of reading, a consumer may have the bytes pushed to it
    as they arrive (`forward`).
    """

    def __init__(self, stream: Stream, window: int) -> None:
        self._stream = stream
        self._window = window
        self._buffer = bytearray()
        self._eof = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._credit = ReceiveCredit(window)
        self._sink: StreamSink | None = None
        self._paused = False
        self._delivering = False
        self._sink_told = False  # stream_eof or stream_failed was called

    @property
    def finished(self) -> bool:
        """True once the peer's side has ended (EOF) or failed."""
        return self._eof or self._error is not None

    @property
    def bytes_read(self) -> int:
        """Bytes handed to the application so far."""
        return self._credit.consumed

    @property
    def unread(self) -> int:
        """Bytes that arrived and wait for the application."""
        return len(self._buffer)

    def at_eof(self) -> bool:
        """True if the peer finished sending and everything has been read."""
        return self._eof and not self._buffer

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all until EOF if n < 0); b"" at EOF; TransportError if the stream failed."""
        if n == 0:
            return b""
        if n < 0:
            chunks = []
            while chunk := await self.read(self._window):
                chunks.append(chunk)
            return b"".join(chunks)
        if self._sink is not None:
            raise RuntimeError("read() on a mesh stream that forwards to a sink")
        while True:
            if self._error is not None:
                raise fresh(self._error)
            if self._buffer:
                return self._take(n)
            if self._eof:
                return b""
            await self._wait()

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes; asyncio.IncompleteReadError if the stream ends first."""
        parts: list[bytes] = []
        missing = n
        while missing > 0:
            chunk = await self.read(missing)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    def __aiter__(self) -> MeshStreamReader:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(self._window)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def forward(self, sink: StreamSink) -> None:
        """Push the stream into `sink` as it arrives, instead of waiting in `read()`: a tunnel saves
        a task wake-up per chunk. Bytes count as read once handed over, so credit keeps flowing;
        `pause()` holds them here (one window later, the peer stops) until `resume()`. The sink
        runs inside the connection's datagram processing: it must not block; if it raises, the
        stream is reset. Whatever arrived before this call is handed over at once."""
        if self._sink is not None or self._waiter is not None:
            raise RuntimeError("a mesh stream has one consumer")
        self._sink = sink
        self.deliver()

    def pause(self) -> None:
        """Stop handing bytes to the sink until `resume()` (the sink's own buffer is full)."""
        self._paused = True

    def resume(self) -> None:
        """Hand the sink what arrived while paused, and whatever comes next."""
        self._paused = False
        self.deliver()

    def deliver(self) -> None:
        """Push buffered bytes, then the end or the failure, to the `forward` sink, if any."""
        sink = self._sink
        if sink is None or self._delivering:
            return
        self._delivering = True
        try:
            if self._buffer and not self._paused and self._error is None:
                sink.stream_data(self._take(len(self._buffer)))
            if self._sink_told:
                return
            if self._error is not None:  # told at once, paused or not
                self._sink_told = True
                sink.stream_failed(fresh(self._error))
            elif self._eof and not self._buffer and not self._paused:
                self._sink_told = True
                sink.stream_eof()
        except Exception:
            log.exception("sink of mesh stream %r failed", self._stream.kind)
            self._stream.abort(StreamCode.HANDLER_FAILED, "stream sink failed")
        finally:
            self._delivering = False

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        grant = self._credit.read(len(data))
        if grant is not None and not self.finished:
            self._stream.conn.send_credit(self._stream.id, grant)
        return data

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("two coroutines are reading the same mesh stream")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def feed_data(self, data: bytes, deliver: bool = True) -> None:
        """Bytes from the peer; with deliver=False a sink gets them at the next `deliver()`, a burst at once."""
        if self.finished:
            return
        if not self._credit.arrived(len(data)):
            self._stream.abort(StreamCode.FLOW_CONTROL, "peer sent more than its stream credit")
            return
        self._buffer += data
        wake(self._waiter)
        if deliver:
            self.deliver()

    def feed_eof(self) -> None:
        """The peer's FIN: reads end once the buffer is drained."""
        if self.finished:
            return
        self._eof = True
        wake(self._waiter)
        self._stream.maybe_forget()
        self.deliver()

    def fail(self, exc: TransportError, *, discard: bool = False) -> None:
        """The stream broke: pending and later reads raise `exc`. A finished stream keeps what
        it holds unless `discard` (it was aborted here: nobody will read the rest)."""
        if self._error is not None or (self._eof and not discard):
            return
        self._error = exc
        self._buffer.clear()
        wake(self._waiter)
        self._stream.maybe_forget()
        self.deliver()


class MeshStreamWriter:
    """The sending half of a mesh stream: `write`, `drain`, `write_eof`, `close` as on asyncio's.

    `write` never blocks; `drain` waits until everything written fits in the peer's credit, so
    a writer that drains holds at most one window in memory. `write_eof` half-closes (FIN);
    `abort` resets both directions.
    """

    def __init__(self, stream: Stream, credit: int) -> None:
        self._stream = stream
        self._send_credit = SendCredit(credit)
        self._written = 0
        self._pending = bytearray()
        self._eof_wanted = False
        self._eof_sent = False
        self._error: TransportError | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def finished(self) -> bool:
        """True once EOF went out or the stream failed."""
        return self._eof_sent or self._error is not None

    @property
    def bytes_written(self) -> int:
        """Bytes the application has written so far."""
        return self._written

    @property
    def backlog(self) -> int:
        """Bytes written but held back for want of the peer's credit; `drain()` waits for 0."""
        return len(self._pending)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes; call `drain()` to wait until the peer has room for them."""
        if self._error is not None:
            raise fresh(self._error)
        if self._eof_wanted:
            raise TransportError("write() after write_eof() on a mesh stream")
        if not data:
            return
        self._pending += data
        self._written += len(data)
        self._flush()

    def writelines(self, chunks: Iterable[bytes]) -> None:
        """Write each chunk in turn."""
        for chunk in chunks:
            self.write(chunk)

    async def drain(self) -> None:
        """Wait until all written bytes are within the peer's credit; raise if the stream failed."""
        while True:
            if self._error is not None:
                raise fresh(self._error)
            if not self._pending:
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def can_write_eof(self) -> bool:
        """Always True: mesh streams half-close."""
        return True

    def write_eof(self) -> None:
        """Send EOF once queued bytes are out; the peer's reader then sees b""."""
        if self._eof_wanted or self._error is not None:
            return
        self._eof_wanted = True
        self._flush()

    def close(self) -> None:
        """Same as write_eof(): the receiving direction stays open until the peer ends it."""
        self.write_eof()

    def is_closing(self) -> bool:
        """True after write_eof()/close() or a failure."""
        return self._eof_wanted or self._error is not None

    async def wait_closed(self) -> None:
        """Wait until EOF has been handed to QUIC (or the stream failed)."""
        with contextlib.suppress(TransportError):
            await self.drain()

    def abort(self, code: StreamCode = StreamCode.CANCELLED) -> None:
        """Reset the whole stream (both directions) with `code`."""
        self._stream.abort(code, f"stream aborted locally ({code_name(StreamCode, code)})")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """'stream_id', 'kind', 'peer_id' or 'peername' (the peer's address)."""
        s, conn = self._stream, self._stream.conn
        info = {"stream_id": s.id, "kind": s.kind, "peer_id": conn.peer_id, "peername": conn.remote_address}
        return info.get(name, default)

    def grant_credit(self, limit: int) -> None:
        """The peer lets us send up to `limit` bytes in all on this stream."""
        if self._send_credit.raise_to(limit):
            self._flush()

    def _flush(self) -> None:
        if self._error is not None:
            return
        room = self._send_credit.room
        chunk = b""
        if room > 0 and self._pending:
            chunk = bytes(self._pending[:room])
            del self._pending[: len(chunk)]
            self._send_credit.spend(len(chunk))
        fin = self._eof_wanted and not self._pending and not self._eof_sent
        if chunk or fin:
            try:
                self._stream.conn.send_stream_data(self._stream.id, chunk, end_stream=fin)
            except TransportError as exc:
                self.fail(exc)
                return
        if fin:
            self._eof_sent = True
        if not self._pending:
            for waiter in self._waiters:
                wake(waiter)
        if fin:
            self._stream.maybe_forget()

    def fail(self, exc: TransportError) -> None:
        """The stream broke: pending and later writes and drains raise `exc`."""
        if self.finished:
            return
        self._error = exc
        self._pending.clear()
        for waiter in self._waiters:
            wake(waiter)
        self._stream.maybe_forget()
