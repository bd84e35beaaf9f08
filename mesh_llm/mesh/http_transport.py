"""HTTP/1.1 to one peer's model server, straight over mesh streams: an httpx transport.

`MeshHttpTransport(link, kind, header)` is what an `httpx.AsyncClient` sends a request through
when the model is served by another node. httpcore speaks HTTP/1.1 and pools connections (kept
alive between requests); its network backend here is the mesh: `connect_tcp` opens a stream of
`kind` to the peer, carrying `header`, and the peer's `serve_tcp_streams` joins it to the local
port its resolver names. So a request costs no local TCP hop on this side.

Timeouts keep their httpx meaning (connect: opening the stream; read; write), and errors come
out as httpx's own (`ConnectError`, `ReadError`, `ReadTimeout`, ...), mapped the way httpx's
`AsyncHTTPTransport` maps httpcore's, so callers treat a remote host like a local one. A peer
that refuses the stream or goes away shows up as a `ReadError`. A URL's host and port do not
route anything (the transport reaches one peer); they only make the Host header the model server
sees, so use `BASE_URL`, the loopback name a local client would send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import httpcore
import httpx

from mesh_llm.errors import TransportError
from mesh_llm.transport import MeshStreamReader, MeshStreamWriter, PeerLink, StreamCode

__all__ = ["BASE_URL", "MeshHttpTransport"]

BASE_URL = "http://localhost"
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200)

# httpcore's exceptions and httpx's for them; of several that match, the deepest wins.
_EXCEPTIONS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise httpcore's exceptions as the matching httpx ones (the most specific that fits)."""
    try:
        yield
    except Exception as exc:
        mapped: type[httpx.TransportError] | None = None
        for source, target in _EXCEPTIONS.items():
            if isinstance(exc, source) and (mapped is None or issubclass(target, mapped)):
                mapped = target
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _MeshStream(httpcore.AsyncNetworkStream):
    """One mesh stream, as httpcore's connections read and write a socket."""

    def __init__(self, reader: MeshStreamReader, writer: MeshStreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"no answer from the peer within {timeout} s") from exc
        except TransportError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()  # the peer's credit, as a socket's send buffer
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"the peer took nothing for {timeout} s") from exc
        except TransportError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader.finished:
            self._writer.write_eof()  # the server ended its side: end ours, a clean close
        else:
            # Mid-answer (the caller left, or the pool let an idle connection go): a reset makes
            # the peer drop its model server connection at once, which frees the server's slot.
            self._writer.abort(StreamCode.CANCELLED)

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("mesh streams are already encrypted; TLS over them is not supported")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks this of an idle kept-alive connection: readable means the server
            # closed it (EOF or reset), so the pool drops it instead of sending into it.
            return self._reader.finished
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        return None


class _MeshBackend(httpcore.AsyncNetworkBackend):
    """Connections that are mesh streams of one kind to one peer."""

    def __init__(self, link: PeerLink, kind: str, header: Mapping[str, Any]) -> None:
        self._link = link
        self._kind = kind
        self._header = dict(header)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if not self._link.is_open:
            raise httpcore.ConnectError(f"no open link to {self._link.short_id}")
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._link.open_stream(self._kind, self._header)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"no stream to {self._link.short_id} within {timeout} s") from exc
        except TransportError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _MeshStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("a mesh transport reaches its peer only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _httpx_errors():
                await close()


class MeshHttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections are mesh streams of `kind` to `link`'s peer.

    Connections are pooled and kept alive (one stream each) up to `limits`. Close with
    `aclose()` (when the link goes): requests still running then fail with `ReadError`.
    """

    def __init__(
        self,
        link: PeerLink,
        kind: str,
        header: Mapping[str, Any] | None = None,
        *,
        limits: httpx.Limits = _LIMITS,
    ) -> None:
        self.link = link
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_MeshBackend(link, kind, header or {}),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class HttpTransports:
    """The node's transports to remote model servers: one per (node, model), on its current link.

    When a better path replaces a link (a relayed one upgraded to direct), the old link retires
    while its streams finish; its transport is kept until then, so requests in flight on it end
    normally, and handed back for closing once that link has closed.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._live: dict[tuple[str, str], MeshHttpTransport] = {}  # (node id, model) -> transport
        self._retiring: list[MeshHttpTransport] = []

    def get(self, link: PeerLink, model: str) -> tuple[MeshHttpTransport, list[MeshHttpTransport]]:
        """The transport to `model` over `link`, and the retired ones that are now safe to close."""
        key = (link.node_id, model)
        http = self._live.get(key)
        if http is None or http.link is not link:  # first use, or a new link to the peer
            if http is not None:
                self._retiring.append(http)
            http = self._live[key] = MeshHttpTransport(link, self._kind, {"model": model})
        done = [h for h in self._retiring if not h.link.is_open]
        self._retiring = [h for h in self._retiring if h.link.is_open]
        return http, done

    def drop(self, node_id: str | None = None) -> list[MeshHttpTransport]:
        """The transports to `node_id` (None: all), to close now: it left, restarted or was lost."""
        out = [self._live.pop(k) for k in [k for k in self._live if node_id in (None, k[0])]]
        out += [h for h in self._retiring if node_id in (None, h.link.node_id)]
        self._retiring = [h for h in self._retiring if node_id not in (None, h.link.node_id)]
        return out
