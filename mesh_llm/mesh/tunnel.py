"""Bridges between local sockets and mesh streams.

Two halves, one on each node:

* `open_tcp_tunnel(link, kind, header)` listens on 127.0.0.1 (a free port); every TCP
  connection accepted there becomes a stream of `kind` to the peer, carrying `header`.
* `serve_tcp_streams(transport, kind, resolver)` handles incoming streams of `kind` by
  connecting to what `resolver(peer_id, header)` names: a port on 127.0.0.1 (llama.cpp's RPC
  workers speak only TCP) or the path of a Unix socket (a model server); a resolver answering
  None refuses the stream (it is reset).

Bytes are spliced both ways until both directions have ended; EOF is passed on as a
half-close, so request/response protocols that shut down their sending side work. Each local
socket is an asyncio protocol joined to its mesh stream: bytes read from the socket go into the
stream in the callback that read them, and the stream pushes what arrives straight into the
socket (`MeshStreamReader.forward`), so a tunneled request costs no task wake-ups, and bytes
that arrive together leave in one QUIC packet. A slow consumer on either side slows the
producer instead of filling memory: the socket stops being read while the peer has no credit
left, and the stream stops being consumed while the socket's write buffer is full. This is how
a split host reaches a remote llama.cpp RPC worker, and how a node's model server takes the HTTP
streams a peer's proxy opens (with `http_transport.MeshHttpTransport`, no tunnel on that side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from mesh_llm.errors import TransportError
from mesh_llm.transport import MeshStreamReader, MeshStreamWriter, MeshTransport, PeerLink, StreamCode

__all__ = ["TcpTunnel", "TunnelCounters", "open_tcp_tunnel", "serve_tcp_streams"]

log = logging.getLogger(__name__)

_LOCAL_HOST = "127.0.0.1"
_CONNECT_TIMEOUT = 5.0

# A stream's local target: a TCP port on 127.0.0.1, or a Unix socket's path; None refuses it.
TargetResolver = Callable[[str, dict[str, Any]], int | Path | None]


@dataclass
class TunnelCounters:
    """Traffic through one tunnel or stream service, seen from this node."""

    bytes_to_peer: int = 0  # read from the local socket, sent into the mesh stream
    bytes_from_peer: int = 0  # received from the mesh stream, written to the local socket
    connections: int = 0  # accepted (tunnel) or served (service), ever
    active: int = 0  # currently open
    failures: int = 0  # ended by an error or a refusal rather than clean EOFs


class _Splice(asyncio.Protocol):
    """One local connection (TCP or Unix) of a tunnel, joined to one mesh stream (see the module docstring)."""

    def __init__(
        self, counters: TunnelCounters, on_connected: Callable[[_Splice], None] | None = None
    ) -> None:
        self._counters = counters
        self._on_connected = on_connected
        loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader: MeshStreamReader | None = None
        self._writer: MeshStreamWriter | None = None
        # Set when both directions have ended, or fails with the first error.
        self._ended: asyncio.Future[None] = loop.create_future()
        self._ended.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._lost: asyncio.Future[None] = loop.create_future()  # the socket is closed
        self._eof_to_peer = False  # the socket's EOF went into the stream
        self._eof_from_peer = False  # the stream's EOF went into the socket
        self._socket_gone = False
        self._credit_wait: asyncio.Task[None] | None = None

    async def splice(self, reader: MeshStreamReader, writer: MeshStreamWriter) -> None:
        """Pipe both ways until both directions have ended; on any failure, tear down both sides."""
        assert self._transport is not None
        transport = self._transport
        self._reader, self._writer = reader, writer
        self._counters.active += 1
        try:
            reader.forward(self)
            if self._socket_gone:
                self._pass_eof_to_peer()
            else:
                transport.resume_reading()  # paused until now: nothing could take the bytes
            await self._ended
        except (OSError, TransportError) as exc:
            # One side broke: the other direction cannot finish meaningfully either.
            self._counters.failures += 1
            log.debug("tunnel %s ended with an error: %s", writer.get_extra_info("kind"), exc)
            writer.abort(StreamCode.CANCELLED)
            transport.abort()
        except asyncio.CancelledError:
            writer.abort(StreamCode.CANCELLED)
            transport.abort()
            raise
        finally:
            self._counters.active -= 1
            if self._credit_wait is not None:
                self._credit_wait.cancel()
            transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._lost), _CONNECT_TIMEOUT)

    def abort(self) -> None:
        """Drop the socket (reset) without having spliced it."""
        if self._transport is not None:
            self._transport.abort()

    # --- the socket (asyncio.Protocol) -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.pause_reading()  # until splice(): nothing could take the bytes yet
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        writer, transport = self._writer, self._transport
        assert writer is not None and transport is not None
        try:
            writer.write(data)
        except TransportError as exc:
            self._end(exc)
            return
        self._counters.bytes_to_peer += len(data)
        if writer.backlog and self._credit_wait is None:
            # The peer's credit is used up: read nothing more until it has room again.
            transport.pause_reading()
            self._credit_wait = asyncio.ensure_future(self._wait_for_credit(writer, transport))

    def eof_received(self) -> bool:
        self._pass_eof_to_peer()
        return True  # keep the socket open: the other direction may not be finished

    def connection_lost(self, exc: Exception | None) -> None:
        self._socket_gone = True
        if not self._lost.done():
            self._lost.set_result(None)
        if exc is not None:
            self._end(exc if isinstance(exc, OSError) else OSError(str(exc)))
            return
        # Closed cleanly: that ends what the socket sends; what the peer still sends has nobody
        # to go to and is dropped until its EOF.
        self._pass_eof_to_peer()
        if self._reader is not None:
            self._reader.resume()

    def pause_writing(self) -> None:
        if self._reader is not None:
            self._reader.pause()

    def resume_writing(self) -> None:
        if self._reader is not None:
            self._reader.resume()

    # --- the mesh stream (StreamSink) ---------------------------------------------------------

    def stream_data(self, data: bytes) -> None:
        self._counters.bytes_from_peer += len(data)
        if not self._socket_gone and self._transport is not None:
            self._transport.write(data)

    def stream_eof(self) -> None:
        self._eof_from_peer = True
        transport = self._transport
        if not self._socket_gone and transport is not None and transport.can_write_eof():
            transport.write_eof()
        self._check_ended()

    def stream_failed(self, exc: TransportError) -> None:
        self._end(exc)

    # --- helpers ------------------------------------------------------------------------------

    async def _wait_for_credit(self, writer: MeshStreamWriter, transport: asyncio.Transport) -> None:
        try:
            await writer.drain()
        except TransportError as exc:
            self._end(exc)
            return
        finally:
            self._credit_wait = None
        if not self._socket_gone and not self._eof_to_peer:
            transport.resume_reading()

    def _pass_eof_to_peer(self) -> None:
        if self._writer is not None and not self._eof_to_peer:
            self._eof_to_peer = True
            self._writer.write_eof()
            self._check_ended()

    def _check_ended(self) -> None:
        if self._eof_to_peer and self._eof_from_peer and not self._ended.done():
            self._ended.set_result(None)

    def _end(self, exc: BaseException) -> None:
        if not self._ended.done():
            self._ended.set_exception(exc)


class TcpTunnel:
    """A local TCP listener whose connections are carried to one peer as mesh streams."""

    def __init__(self, link: PeerLink, kind: str, header: Mapping[str, Any] | None = None) -> None:
        self.link = link
        self.kind = kind
        self.header = dict(header or {})
        self.counters = TunnelCounters()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The local port (0 before start())."""
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> int:
        """Listen on 127.0.0.1 on a free port; return the port."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Splice(self.counters, self._accepted), _LOCAL_HOST, 0
            )
        except OSError as exc:
            raise TransportError(f"cannot listen for tunnel {self.kind!r}: {exc.strerror or exc}") from exc
        log.debug("tunnel %r to %s listening on %s:%d", self.kind, self.link.short_id, _LOCAL_HOST, self.port)
        return self.port

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), _CONNECT_TIMEOUT)

    def _accepted(self, splice: _Splice) -> None:
        task = asyncio.ensure_future(self._serve(splice))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _serve(self, splice: _Splice) -> None:
        self.counters.connections += 1
        try:
            mesh_reader, mesh_writer = await self.link.open_stream(self.kind, self.header)
        except TransportError as exc:
            self.counters.failures += 1
            log.info("tunnel %r to %s: %s", self.kind, self.link.short_id, exc)
            splice.abort()
            return
        except BaseException:
            splice.abort()
            raise
        await splice.splice(mesh_reader, mesh_writer)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("tunnel %r connection failed", self.kind, exc_info=task.exception())


async def open_tcp_tunnel(link: PeerLink, kind: str, header: Mapping[str, Any] | None = None) -> TcpTunnel:
    """Start a `TcpTunnel` to `link`'s peer; connect to 127.0.0.1:`tunnel.port` to use it."""
    tunnel = TcpTunnel(link, kind, header)
    await tunnel.start()
    return tunnel


def serve_tcp_streams(transport: MeshTransport, kind: str, resolver: TargetResolver) -> TunnelCounters:
    """Serve incoming streams of `kind` by connecting to `resolver(peer_id, header)`: a port on
    127.0.0.1, or a Unix socket's path.

    A resolver returning None refuses the stream (reset with REFUSED), as does a local target
    that does not accept the connection. Returns the counters for all streams served.
    """
    counters = TunnelCounters()

    async def handle(
        peer_id: str, header: dict[str, Any], mesh_reader: MeshStreamReader, mesh_writer: MeshStreamWriter
    ) -> None:
        counters.connections += 1
        target = resolver(peer_id, header)
        if target is None:
            counters.failures += 1
            log.info("refused %r stream from %s: no local target", kind, peer_id[:8])
            mesh_writer.abort(StreamCode.REFUSED)
            return
        loop = asyncio.get_running_loop()
        if isinstance(target, Path):
            connect = loop.create_unix_connection(lambda: _Splice(counters), str(target))
        else:
            connect = loop.create_connection(lambda: _Splice(counters), _LOCAL_HOST, target)
        try:
            _, splice = await asyncio.wait_for(connect, _CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            counters.failures += 1
            log.warning(
                "%r stream from %s: cannot reach local %s: %s", kind, peer_id[:8], _named(target), exc
            )
            mesh_writer.abort(StreamCode.REFUSED)
            return
        await splice.splice(mesh_reader, mesh_writer)

    transport.on_stream(kind, handle)
    return counters


def _named(target: int | Path) -> str:
    return f"socket {target}" if isinstance(target, Path) else f"port {target}"
