"""Bridges between local TCP sockets and mesh streams.

Two halves, one on each node:

* `open_tcp_tunnel(link, kind, header)` listens on 127.0.0.1 (a free port); every TCP
  connection accepted there becomes a stream of `kind` to the peer, carrying `header`.
* `serve_tcp_streams(transport, kind, resolver)` handles incoming streams of `kind` by
  connecting to 127.0.0.1:`resolver(peer_id, header)`; a resolver answering None refuses the
  stream (it is reset).

Bytes are piped both ways until both directions have ended; EOF is passed on as a half-close,
so request/response protocols that shut down their sending side work. Each pipe waits for its
writer to drain before reading more, so a slow consumer on either side slows the producer
instead of filling memory. This is how the proxy reaches a remote model server over HTTP and
how a split host reaches a remote llama.cpp RPC worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mesh_llm.errors import TransportError
from mesh_llm.mesh.transport import MeshStreamReader, MeshStreamWriter, MeshTransport, PeerLink, StreamCode

__all__ = ["TcpTunnel", "TunnelCounters", "open_tcp_tunnel", "serve_tcp_streams"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_LOCAL_HOST = "127.0.0.1"
_CONNECT_TIMEOUT = 5.0

TargetResolver = Callable[[str, dict[str, Any]], int | None]


@dataclass
class TunnelCounters:
    """Traffic through one tunnel or stream service, seen from this node."""

    bytes_to_peer: int = 0  # read from the local TCP socket, sent into the mesh stream
    bytes_from_peer: int = 0  # received from the mesh stream, written to the local TCP socket
    connections: int = 0  # accepted (tunnel) or served (service), ever
    active: int = 0  # currently open
    failures: int = 0  # ended by an error or a refusal rather than clean EOFs


class _ByteSource(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class _ByteSink(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    def can_write_eof(self) -> bool: ...


async def _pump(source: _ByteSource, sink: _ByteSink, count: Callable[[int], None]) -> None:
    """Copy until EOF, then half-close the sink."""
    while chunk := await source.read(_CHUNK):
        sink.write(chunk)
        count(len(chunk))
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()


async def _bridge(
    tcp_reader: asyncio.StreamReader,
    tcp_writer: asyncio.StreamWriter,
    mesh_reader: MeshStreamReader,
    mesh_writer: MeshStreamWriter,
    counters: TunnelCounters,
) -> None:
    """Pipe both ways until both directions end; on any failure, tear down both sides."""

    def to_peer(n: int) -> None:
        counters.bytes_to_peer += n

    def from_peer(n: int) -> None:
        counters.bytes_from_peer += n

    counters.active += 1
    outbound = asyncio.ensure_future(_pump(tcp_reader, mesh_writer, to_peer))
    inbound = asyncio.ensure_future(_pump(mesh_reader, tcp_writer, from_peer))
    try:
        await asyncio.gather(outbound, inbound)
    except (OSError, TransportError) as exc:
        # One side broke: the other direction cannot finish meaningfully either.
        counters.failures += 1
        log.debug("tunnel %s ended with an error: %s", mesh_writer.get_extra_info("kind"), exc)
        mesh_writer.abort(StreamCode.CANCELLED)
        tcp_writer.transport.abort()
    except asyncio.CancelledError:
        mesh_writer.abort(StreamCode.CANCELLED)
        tcp_writer.transport.abort()
        raise
    finally:
        for task in (outbound, inbound):
            task.cancel()
        await asyncio.gather(outbound, inbound, return_exceptions=True)
        counters.active -= 1
        tcp_writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(tcp_writer.wait_closed(), _CONNECT_TIMEOUT)


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
        try:
            self._server = await asyncio.start_server(self._accept, _LOCAL_HOST, 0)
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

    async def _accept(self, tcp_reader: asyncio.StreamReader, tcp_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.counters.connections += 1
        try:
            try:
                mesh_reader, mesh_writer = await self.link.open_stream(self.kind, self.header)
            except TransportError as exc:
                self.counters.failures += 1
                log.info("tunnel %r to %s: %s", self.kind, self.link.short_id, exc)
                tcp_writer.transport.abort()
                return
            await _bridge(tcp_reader, tcp_writer, mesh_reader, mesh_writer, self.counters)
        finally:
            self._tasks.discard(task)


async def open_tcp_tunnel(link: PeerLink, kind: str, header: Mapping[str, Any] | None = None) -> TcpTunnel:
    """Start a `TcpTunnel` to `link`'s peer; connect to 127.0.0.1:`tunnel.port` to use it."""
    tunnel = TcpTunnel(link, kind, header)
    await tunnel.start()
    return tunnel


def serve_tcp_streams(transport: MeshTransport, kind: str, resolver: TargetResolver) -> TunnelCounters:
    """Serve incoming streams of `kind` by connecting to 127.0.0.1:`resolver(peer_id, header)`.

    A resolver returning None refuses the stream (reset with REFUSED), as does a local port that
    does not accept the connection. Returns the counters for all streams served.
    """
    counters = TunnelCounters()

    async def handle(
        peer_id: str, header: dict[str, Any], mesh_reader: MeshStreamReader, mesh_writer: MeshStreamWriter
    ) -> None:
        counters.connections += 1
        port = resolver(peer_id, header)
        if port is None:
            counters.failures += 1
            log.info("refused %r stream from %s: no local target", kind, peer_id[:8])
            mesh_writer.abort(StreamCode.REFUSED)
            return
        try:
            tcp_reader, tcp_writer = await asyncio.wait_for(
                asyncio.open_connection(_LOCAL_HOST, port), _CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            counters.failures += 1
            log.warning("%r stream from %s: cannot reach local port %d: %s", kind, peer_id[:8], port, exc)
            mesh_writer.abort(StreamCode.REFUSED)
            return
        await _bridge(tcp_reader, tcp_writer, mesh_reader, mesh_writer, counters)

    transport.on_stream(kind, handle)
    return counters
