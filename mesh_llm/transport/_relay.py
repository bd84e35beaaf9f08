"""Relayed paths: a member both ends can reach carries their own QUIC packets.

When two members cannot reach each other directly, one of them (the dialer) opens a `_relay`
stream to a member linked to both, naming the other. That member (the relay) opens a `_relayed`
stream to the other end and copies bytes both ways. On each end, a QUIC connection sends and
receives its datagrams through the stream instead of a UDP socket (`RelayPath`), each datagram
framed by its length, in the manner of MASQUE's CONNECT-UDP. The two ends run their own QUIC
handshake and mesh authentication inside: the relay sees sizes and timing, never plaintext, and
cannot change or inject packets without failing their authentication.

The relay only copies between two authenticated links it holds itself (so only members use
it, and only to reach members), never to a peer it reaches through another relay, and within
a bandwidth budget shared by everything it relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from typing import Any

from mesh_llm.errors import TransportError
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter

log = logging.getLogger("mesh_llm.transport")

RELAY_STREAM = "_relay"  # an end asks a relay: header {"to": the other end's node id}
RELAYED_STREAM = "_relayed"  # the relay to the other end: header {"from": the dialer's node id}
RELAY_DATAGRAM_SIZE = 16336  # the stream carries any size; fewer, larger packets cost less
_LENGTH = struct.Struct("!H")
_MAX_BACKLOG = 4 << 20  # bytes a relayed connection may queue before its datagrams are dropped
_READ = 1 << 16


class RelayPath:
    """What a relayed connection sends its datagrams through: one mesh stream, length-framed.

    It stands in for the asyncio datagram transport under a connection. Like UDP, it drops a
    datagram rather than queue without bound; QUIC retransmits.
    """

    def __init__(self, writer: MeshStreamWriter) -> None:
        self._writer = writer
        self._closed = False
        self.dropped = 0

    def is_closing(self) -> bool:
        return self._closed or self._writer.finished

    def get_write_buffer_size(self) -> int:
        return self._writer.backlog

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self.is_closing():
            return
        if self._writer.backlog > _MAX_BACKLOG:
            self.dropped += 1
            return
        try:
            self._writer.write(_LENGTH.pack(len(data)) + data)
        except TransportError:
            self._closed = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(TransportError):
                self._writer.abort()


class FrameReader:
    """Splits a relay stream's bytes into the datagrams framed in it (pure)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The datagrams that `data` completes, in order."""
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + size
            if len(self._buffer) < end:
                break
            out.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return out


async def feed_connection(
    reader: MeshStreamReader,
    frames: FrameReader,
    conn: Any,
    addr: Any,
    first: list[bytes] = [],  # noqa: B006 - never mutated
) -> str:
    """Feed the datagrams arriving on a relay stream to `conn` until the stream ends; why it ended."""
    pending = list(first)
    try:
        while True:
            for datagram in pending:
                conn.datagram_in(datagram, addr)
            if pending:
                conn.datagrams_done()
            chunk = await reader.read(_READ)
            if not chunk:
                return "the relay closed the path"
            pending = frames.feed(chunk)
    except TransportError as exc:
        return f"the relay path failed: {exc}"


class RelayBudget:
    """Bytes per second all relayed traffic may use together (0: no limit), as a token bucket."""

    def __init__(self, bytes_per_s: int, clock: Callable[[], float]) -> None:
        self._rate = bytes_per_s
        self._clock = clock
        self._tokens = float(bytes_per_s)
        self._at = clock()

    def delay_for(self, size: int) -> float:
        """Take `size` bytes from the bucket; how long to wait before sending them."""
        if self._rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(float(self._rate), self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= size
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


async def copy_relayed(
    reader: MeshStreamReader,
    writer: MeshStreamWriter,
    budget: RelayBudget,
    count: Callable[[int], None],
) -> None:
    """Copy one direction of a relayed path, within the budget, counting its bytes."""
    while chunk := await reader.read(_READ):
        count(len(chunk))
        delay = budget.delay_for(len(chunk))
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()


async def relay_between(
    ends: tuple[tuple[MeshStreamReader, MeshStreamWriter], tuple[MeshStreamReader, MeshStreamWriter]],
    budget: RelayBudget,
    count: Callable[[int], None],
) -> None:
    """Copy both ways until either side ends or fails; then end both."""
    (a_reader, a_writer), (b_reader, b_writer) = ends
    tasks = [
        asyncio.ensure_future(copy_relayed(a_reader, b_writer, budget, count)),
        asyncio.ensure_future(copy_relayed(b_reader, a_writer, budget, count)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (a_writer, b_writer):
            if not writer.finished:
                with contextlib.suppress(TransportError):
                    writer.abort()
