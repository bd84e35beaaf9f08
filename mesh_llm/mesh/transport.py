"""The authenticated QUIC layer of the mesh: listen, dial, authenticate, one link per peer.

Every node runs one `MeshTransport`. It listens on one UDP socket (dual-stack "::" by default)
and dials peers from a fresh UDP socket per connection. A QUIC connection becomes a `PeerLink`
only after mutual authentication on its control stream (the dialer's first bidirectional
stream, id 0); before that, nothing else is accepted from the peer.

Authentication (both sides hold `MeshCredentials` and a `NodeIdentity`):

    dialer -> listener   _hello  {mesh id, dialer node id, nonce_d, stream window}
    listener -> dialer   _hello  {mesh id, listener node id, nonce_l, stream window}
                         (sent only if the mesh id matched, else closed with WRONG_MESH)
    dialer -> listener   _auth   {HMAC(secret, "client" | T), sign_dialer("client" | T)}
    listener -> dialer   _auth   {HMAC(secret, "server" | T), sign_listener("server" | T)}

    T = SHA-256(label | mesh id | SHA-256(listener's TLS certificate) | both node ids
                | nonce_d | nonce_l | both windows)

The dialer also checks that the listener's TLS certificate key *is* the node id it claims (TLS
already proved possession of that key), and that it is the node it meant to reach. Fresh nonces
make proofs single-use; the certificate hash binds them to this TLS session, so a relay that
terminates TLS itself cannot forward them. The listener proves nothing until the dialer has.
A peer that fails is closed with an error code and has received nothing but a hello.

One link per peer: a dial to a node we already have a link with returns that link. When two
nodes dial each other at once, the connection initiated by the lower node id wins on both
sides: the listener refuses (DUPLICATE) an incoming connection from a higher id while its own
dial to that id has reached it, and the refused dialer waits for the winning link instead.

Streams: each data stream starts with one frame {"t": "_open", "kind", "header"}, then raw
bytes both ways. QUIC's own flow-control window in aioquic grows with what arrives, not with
what the application reads, so streams carry their own credit: a receiver grants `window` bytes
beyond what it has read, in `_credit` messages on the control stream, and a writer never sends
past its credit. A slow reader therefore stalls its writer instead of filling memory.

Packets: aioquic spends ~50 us of Python building a datagram and as much parsing one, so the
number of datagrams is what a tunneled request/response pays for. Peers on this host (loopback
or one of our own addresses, where the path MTU is the loopback interface's) get datagrams of
up to `same_host_datagram_size`; others get `max_datagram_size`, which assumes only an Ethernet
MTU. A burst of datagrams is read in one go and answered with one transmit, and a pending ACK
rides along with stream data instead of following it in a datagram of its own.

Liveness: a `_ping` every `keepalive_interval` keeps the connection busy and feeds the RTT EWMA;
QUIC's idle timeout closes a connection whose peer stopped answering (kill -9, cable pulled).

This module is the one seam where OSError and aioquic/TLS failures become errors.py types.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import hmac
import inspect
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh_llm.errors import (
    AuthenticationError,
    ConfigError,
    MalformedFrame,
    PeerUnreachable,
    TransportError,
    WireError,
)
from mesh_llm.mesh.identity import NodeIdentity, is_node_id
from mesh_llm.mesh.rtt import RttEstimator
from mesh_llm.mesh.token import MESH_ID_BYTES, MeshCredentials, format_address, parse_address
from mesh_llm.mesh.wire import DEFAULT_MAX_FRAME, TYPE_FIELD, FrameDecoder, encode_frame, try_decode_frame

__all__ = [
    "ALPN",
    "CloseCode",
    "MeshStreamReader",
    "MeshStreamWriter",
    "MeshTransport",
    "MessageHandler",
    "PeerLink",
    "StreamCode",
    "StreamHandler",
    "StreamSink",
    "TransportConfig",
]

log = logging.getLogger(__name__)

ALPN = "mesh-llm/1"
_AUTH_VERSION = 1
_AUTH_LABEL = b"mesh-llm auth v1\x00"
_CLIENT_ROLE = b"client"
_SERVER_ROLE = b"server"
_NONCE_BYTES = 32
_MIN_WINDOW = 16 * 1024
_MAX_WINDOW = 1 << 30
# Messages a peer may queue before authentication finishes (the listener's proof is usually
# followed at once by its first gossip); more than this is abuse, not a race.
_MAX_PENDING_MESSAGES = 256
_MAX_OUTSTANDING_PINGS = 16
_SOCKET_BUFFER_BYTES = 4 << 20
# aioquic writes STREAM and CRYPTO frame lengths as 2-byte varints, so a datagram above this
# size gets frames whose length field overflows and the peer fails with FRAME_ENCODING_ERROR.
_MAX_DATAGRAM_SIZE = 16383
# Datagrams read from a socket in one go (see _drain_socket); bounds one callback's work.
_DRAIN_BATCH = 64
_RECV_BYTES = 65536


class CloseCode(enum.IntEnum):
    """Application error codes a mesh connection is closed with (RFC 9000 CONNECTION_CLOSE)."""

    GOODBYE = 0x0
    AUTH_FAILED = 0x4D01
    WRONG_MESH = 0x4D02
    AUTH_TIMEOUT = 0x4D03
    DUPLICATE = 0x4D04
    PROTOCOL_ERROR = 0x4D05
    SHUTDOWN = 0x4D06


class StreamCode(enum.IntEnum):
    """Application error codes a single stream is reset or stopped with."""

    CANCELLED = 0x10
    UNKNOWN_KIND = 0x11
    REFUSED = 0x12
    FLOW_CONTROL = 0x13
    NOT_AUTHENTICATED = 0x14
    PROTOCOL_ERROR = 0x15
    HANDLER_FAILED = 0x16


def _code_name(enum_type: type[enum.IntEnum], code: int) -> str:
    try:
        return enum_type(code).name.lower().replace("_", " ")
    except ValueError:
        return f"code {code:#x}"


@dataclass(frozen=True)
class TransportConfig:
    """Timeouts and sizes of the QUIC layer; built once at the edge, read-only afterwards."""

    handshake_timeout: float = 5.0  # QUIC + TLS handshake, per address
    auth_timeout: float = 5.0  # mesh authentication after the handshake (listener side)
    dial_timeout: float = 10.0  # default deadline of a whole dial()
    idle_timeout: float = 5.0  # a peer silent this long is gone
    keepalive_interval: float = 1.0  # ping period: keeps links busy, samples RTT
    max_frame: int = DEFAULT_MAX_FRAME  # largest control message or stream-open frame
    # UDP payload towards peers on other hosts: an Ethernet MTU less IPv6 and UDP headers.
    max_datagram_size: int = 1452
    # UDP payload towards peers on this host (loopback or one of our own addresses), whose
    # datagrams never leave the kernel: fits a 16 KiB loopback MTU (macOS; Linux has 64 KiB)
    # less IPv6 and UDP headers. Each datagram costs aioquic ~50 us of Python to build and as
    # much to parse, so a 9.6 KB RPC request in 1 datagram instead of 7 cuts the latency.
    same_host_datagram_size: int = 16336
    stream_window: int = 1 << 20  # per-stream bytes a peer may send beyond what we have read
    liveness_probe_timeout: float = 1.0  # ping answer wait before treating an old link as dead
    close_timeout: float = 2.0  # how long close() waits for CONNECTION_CLOSE to go out
    rtt_smoothing: float = 0.125  # EWMA weight of a new RTT sample (RFC 6298's alpha)

    def __post_init__(self) -> None:
        for name in (
            "handshake_timeout",
            "auth_timeout",
            "dial_timeout",
            "idle_timeout",
            "keepalive_interval",
            "liveness_probe_timeout",
            "close_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"transport {name} must be positive")
        if self.liveness_probe_timeout >= self.auth_timeout:
            # A listener may probe an old link while a dialer waits for its verdict.
            raise ConfigError("the liveness probe timeout must be shorter than the auth timeout")
        if self.keepalive_interval >= self.idle_timeout:
            raise ConfigError("the keepalive interval must be shorter than the idle timeout")
        for name in ("max_datagram_size", "same_host_datagram_size"):
            if not 1200 <= getattr(self, name) <= _MAX_DATAGRAM_SIZE:
                raise ConfigError(f"{name} must be between 1200 and {_MAX_DATAGRAM_SIZE} bytes")
        if not _MIN_WINDOW <= self.stream_window <= _MAX_WINDOW:
            raise ConfigError(f"stream_window must be between {_MIN_WINDOW} and {_MAX_WINDOW} bytes")
        if self.max_frame < 1024:
            raise ConfigError("max_frame must be at least 1024 bytes")
        if not 0 < self.rtt_smoothing <= 1:
            raise ConfigError("rtt_smoothing must be in (0, 1]")


MessageHandler = Callable[[str, dict[str, Any]], object]
StreamHandler = Callable[[str, dict[str, Any], "MeshStreamReader", "MeshStreamWriter"], Awaitable[None]]


# --- authentication (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class _Hello:
    mesh_id: bytes
    node_id: str
    nonce: bytes
    window: int

    def message(self) -> dict[str, Any]:
        return {
            TYPE_FIELD: "_hello",
            "v": _AUTH_VERSION,
            "mesh": self.mesh_id.hex(),
            "node": self.node_id,
            "nonce": self.nonce.hex(),
            "win": self.window,
        }


_HEX = re.compile(r"[0-9a-f]*")


def strict_hex(value: object, size: int) -> bytes | None:
    """Exactly `size` bytes written as 2*size lowercase hex digits, or None.

    `bytes.fromhex` skips whitespace, so a 31-byte nonce padded with spaces would pass it.
    """
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        return None
    return bytes.fromhex(value)


def _ms_text(ms: float | None) -> str:
    return "unmeasured" if ms is None else f"{ms:.2f} ms"


def _hex_field(msg: Mapping[str, Any], name: str, size: int) -> bytes:
    value = strict_hex(msg.get(name), size)
    if value is None:
        raise AuthenticationError(f"peer's hello has no valid {name!r}")
    return value


def _parse_hello(msg: Mapping[str, Any]) -> _Hello:
    if msg.get(TYPE_FIELD) != "_hello":
        raise AuthenticationError(f"peer sent {msg.get(TYPE_FIELD)!r} where a hello was due")
    if msg.get("v") != _AUTH_VERSION:
        raise AuthenticationError(f"peer speaks authentication version {msg.get('v')!r}, not {_AUTH_VERSION}")
    node_id = msg.get("node")
    if not is_node_id(node_id):
        raise AuthenticationError("peer's hello has no valid node id")
    window = msg.get("win")
    if not isinstance(window, int) or isinstance(window, bool) or not _MIN_WINDOW <= window <= _MAX_WINDOW:
        raise AuthenticationError("peer's hello has no valid stream window")
    assert isinstance(node_id, str)
    return _Hello(
        _hex_field(msg, "mesh", MESH_ID_BYTES), node_id, _hex_field(msg, "nonce", _NONCE_BYTES), window
    )


def _transcript(mesh_id: bytes, server_cert_hash: bytes, client: _Hello, server: _Hello) -> bytes:
    """Everything both proofs commit to; all parts are fixed-size, so plain concatenation is unambiguous."""
    return hashlib.sha256(
        _AUTH_LABEL
        + mesh_id
        + server_cert_hash
        + bytes.fromhex(client.node_id)
        + bytes.fromhex(server.node_id)
        + client.nonce
        + server.nonce
        + struct.pack(">QQ", client.window, server.window)
    ).digest()


def _make_proof(role: bytes, secret: bytes, identity: NodeIdentity, transcript: bytes) -> dict[str, Any]:
    # The role prefix stops a dialer's proof from being reflected back as a listener's proof.
    data = role + transcript
    return {
        TYPE_FIELD: "_auth",
        "mac": hmac.new(secret, data, hashlib.sha256).hexdigest(),
        "sig": identity.sign(data).hex(),
    }


def _proof_is_valid(
    role: bytes, secret: bytes, node_id: str, transcript: bytes, msg: Mapping[str, Any]
) -> bool:
    mac, sig = msg.get("mac"), msg.get("sig")
    if msg.get(TYPE_FIELD) != "_auth" or not isinstance(mac, str) or not isinstance(sig, str):
        return False
    mac_bytes, sig_bytes = strict_hex(mac, hashlib.sha256().digest_size), strict_hex(sig, 64)
    if mac_bytes is None or sig_bytes is None:
        return False
    data = role + transcript
    expected = hmac.new(secret, data, hashlib.sha256).digest()
    return hmac.compare_digest(mac_bytes, expected) and NodeIdentity.verify(node_id, data, sig_bytes)


def _certificate_hash(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def _certificate_node_id(certificate: x509.Certificate) -> str | None:
    key = certificate.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    # aioquic has no public accessor for the peer's certificate; its TLS context keeps the
    # certificate it checked CertificateVerify against. Read defensively so a future aioquic
    # that renames it fails authentication instead of crashing.
    certificate = getattr(quic.tls, "_peer_certificate", None)
    return certificate if isinstance(certificate, x509.Certificate) else None


def _display_address(addr: Any) -> str:
    """'host:port' for a socket address, with IPv4-mapped IPv6 shown as plain IPv4."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "?"
    host = str(addr[0])
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            host = str(ip.ipv4_mapped)
    return format_address(host, int(addr[1]))


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _fresh(exc: TransportError) -> TransportError:
    # Re-raising one stored instance from many places chains tracebacks onto it; raise a copy.
    return type(exc)(*exc.args)


# --- streams ----------------------------------------------------------------------------------


class _Stream:
    """What a stream's reader and writer share: the connection, the id, and teardown."""

    def __init__(
        self, conn: _Connection, stream_id: int, kind: str, recv_window: int, send_window: int
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
        self.reader._fail(exc)
        self.writer._fail(exc)


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

    def __init__(self, stream: _Stream, window: int) -> None:
        self._stream = stream
        self._window = window
        self._buffer = bytearray()
        self._eof = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._received = 0
        self._consumed = 0
        self._granted = window
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
        return self._consumed

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
                raise _fresh(self._error)
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
        """Push the stream into `sink` as it arrives, instead of waiting in `read()`.

        A tunnel saves an event-loop turn (a task wake-up) per chunk this way. Bytes count as
        read once handed over, so the peer's credit keeps flowing; `pause()` holds them here
        (and so, one window later, stops the peer) until `resume()`. The sink runs inside the
        connection's datagram processing: it must not block, and if it raises, the stream is
        reset. Whatever arrived before this call is handed over at once.
        """
        if self._sink is not None or self._waiter is not None:
            raise RuntimeError("a mesh stream has one consumer")
        self._sink = sink
        self._deliver()

    def pause(self) -> None:
        """Stop handing bytes to the sink until `resume()` (the sink's own buffer is full)."""
        self._paused = True

    def resume(self) -> None:
        """Hand the sink what arrived while paused, and whatever comes next."""
        self._paused = False
        self._deliver()

    def _deliver(self) -> None:
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
                sink.stream_failed(_fresh(self._error))
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
        self._consumed += len(data)
        # Re-grant when half the window is used up: few credit messages, no stalls.
        if not self.finished and self._granted - self._consumed <= self._window // 2:
            self._granted = self._consumed + self._window
            self._stream.conn.send_credit(self._stream.id, self._granted)
        return data

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("two coroutines are reading the same mesh stream")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _feed(self, data: bytes) -> None:
        if self.finished:
            return
        self._received += len(data)
        if self._received > self._granted:
            self._stream.abort(StreamCode.FLOW_CONTROL, "peer sent more than its stream credit")
            return
        self._buffer += data
        _wake(self._waiter)
        self._deliver()

    def _feed_eof(self) -> None:
        if self.finished:
            return
        self._eof = True
        _wake(self._waiter)
        self._stream.maybe_forget()
        self._deliver()

    def _fail(self, exc: TransportError) -> None:
        if self.finished:
            return
        self._error = exc
        self._buffer.clear()
        _wake(self._waiter)
        self._stream.maybe_forget()
        self._deliver()


class MeshStreamWriter:
    """The sending half of a mesh stream: `write`, `drain`, `write_eof`, `close` as on asyncio's.

    `write` never blocks; `drain` waits until everything written fits in the peer's credit, so
    a writer that drains holds at most one window in memory. `write_eof` half-closes (FIN);
    `abort` resets both directions.
    """

    def __init__(self, stream: _Stream, credit: int) -> None:
        self._stream = stream
        self._limit = credit
        self._sent = 0
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
            raise _fresh(self._error)
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
                raise _fresh(self._error)
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
        self._stream.abort(code, f"stream aborted locally ({_code_name(StreamCode, code)})")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """'stream_id', 'kind', 'peer_id' or 'peername' (the peer's address)."""
        conn = self._stream.conn
        info = {
            "stream_id": self._stream.id,
            "kind": self._stream.kind,
            "peer_id": conn.peer_id,
            "peername": conn.remote_address,
        }
        return info.get(name, default)

    def _credit(self, limit: int) -> None:
        if limit > self._limit:
            self._limit = limit
            self._flush()

    def _flush(self) -> None:
        if self._error is not None:
            return
        room = self._limit - self._sent
        chunk = b""
        if room > 0 and self._pending:
            chunk = bytes(self._pending[:room])
            del self._pending[: len(chunk)]
            self._sent += len(chunk)
        fin = self._eof_wanted and not self._pending and not self._eof_sent
        if chunk or fin:
            try:
                self._stream.conn.send_stream_data(self._stream.id, chunk, end_stream=fin)
            except TransportError as exc:
                self._fail(exc)
                return
        if fin:
            self._eof_sent = True
        if not self._pending:
            for waiter in self._waiters:
                _wake(waiter)
        if fin:
            self._stream.maybe_forget()

    def _fail(self, exc: TransportError) -> None:
        if self.finished:
            return
        self._error = exc
        self._pending.clear()
        for waiter in self._waiters:
            _wake(waiter)
        self._stream.maybe_forget()


# --- one QUIC connection ----------------------------------------------------------------------


class _State(enum.Enum):
    HANDSHAKING = "handshaking"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSED = "closed"


class _ConnectionGone(Exception):
    """Internal: the connection ended while authentication was waiting for the peer."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _Connection(QuicConnectionProtocol):
    """One QUIC connection: authentication inbox, control stream, data streams, keepalive."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        owner: MeshTransport,
        dialer: bool,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.owner = owner
        self.dialer = dialer
        self._sock = sock  # a dialer's own socket, read in bursts; listeners share the server's
        self._data_queued = False  # stream data waits for the next transmit
        self.state = _State.HANDSHAKING
        self.peer_id: str | None = None
        self.peer_window = 0
        self.link: PeerLink | None = None
        self.remote_address = "?"
        self.udp: asyncio.DatagramTransport | None = None  # dialers own their socket
        self.close_code: int | None = None
        self.close_reason = ""
        self._config = owner.config
        self._control_id = 0  # the dialer's first bidirectional stream
        self._decoder = FrameDecoder(owner.config.max_frame)
        self._inbox: deque[dict[str, Any]] = deque()
        self._inbox_event = asyncio.Event()
        self._early: list[events.QuicEvent] = []
        self._early_bytes = 0
        self._streams: dict[int, _Stream] = {}
        self._opening: dict[int, bytearray] = {}
        self._highest_remote_stream = -1
        self._rtt = RttEstimator()
        self._arrival = 0.0  # when the datagram being processed arrived
        self._ping_seq = 0
        self._pings: dict[int, float] = {}
        self._probes: dict[int, asyncio.Future[None]] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._handshake: asyncio.Future[None] | None = None
        if dialer:
            self._handshake = self._loop.create_future()
            # Mark failures as retrieved: a losing dial attempt may never await its handshake.
            self._handshake.add_done_callback(lambda f: f.cancelled() or f.exception())
        owner._connections.add(self)

    # --- lifecycle --------------------------------------------------------------------------

    def error_received(self, exc: Exception) -> None:
        # Only dialers' connected sockets see ICMP errors. During the handshake, "port
        # unreachable" fails the dial at once instead of after the handshake timeout. On a live
        # link it hints that the peer process died: confirm with a ping rather than trust one
        # (spoofable) ICMP packet.
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(PeerUnreachable(f"{self.remote_address}: {exc}"))
        elif self.state is _State.READY and not self._probes:
            self.owner._spawn(self._confirm_alive(), name=f"probe {self._who()}")

    async def _confirm_alive(self) -> None:
        if not await self.probe(self._config.liveness_probe_timeout):
            self.close_with(CloseCode.GOODBYE, "peer's port is closed (no answer after an ICMP error)")

    async def wait_handshake(self, deadline: float) -> None:
        assert self._handshake is not None
        remaining = max(deadline - self._loop.time(), 0)
        try:
            await asyncio.wait_for(asyncio.shield(self._handshake), remaining)
        except TimeoutError:
            raise PeerUnreachable(
                f"{self.remote_address}: no QUIC handshake within {remaining:.1f} s"
            ) from None

    def close_with(self, code: CloseCode, reason: str, *, tell_peer: str = "") -> None:
        """Close now with `code`; `reason` is for our logs and callbacks, `tell_peer` is sent."""
        if self.state is _State.CLOSED:
            return
        self.close_code = code
        self.close_reason = reason
        # Sync close: quic.close() queues CONNECTION_CLOSE and transmit() sends it right away.
        self.close(error_code=code, reason_phrase=tell_peer or _code_name(CloseCode, code))
        self._enter_closed(reason)

    def abort(self, reason: str) -> None:
        """Close and drop the socket at once (a dial attempt that lost or timed out)."""
        self.close_with(CloseCode.GOODBYE, reason)
        if self.udp is not None:
            self.udp.close()

    # --- authentication inbox ---------------------------------------------------------------

    async def next_auth_message(self, deadline: float) -> dict[str, Any]:
        """The next control message before READY; TimeoutError or _ConnectionGone otherwise."""
        while not self._inbox:
            if self.state is _State.CLOSED:
                raise _ConnectionGone(self.close_code, self.close_reason)
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError
            self._inbox_event.clear()
            await asyncio.wait_for(self._inbox_event.wait(), remaining)
        return self._inbox.popleft()

    def peer_certificate(self) -> x509.Certificate | None:
        return _peer_certificate(self._quic)

    def become_ready(self, link: PeerLink) -> None:
        """Authentication succeeded: deliver what arrived meanwhile, start the keepalive."""
        self.link = link
        self.state = _State.READY
        self._keepalive = self._loop.create_task(self._keep_alive(), name=f"keepalive {link.short_id}")
        self._send_ping()  # a first RTT sample within one round trip, not one keepalive later
        pending, self._inbox = self._inbox, deque()
        for msg in pending:
            self._on_control_message(msg)
        early, self._early = self._early, []
        for event in early:
            self.quic_event_received(event)
        self.transmit()

    # --- sending ----------------------------------------------------------------------------

    def send_control(self, msg: Mapping[str, Any]) -> None:
        if self.state is _State.CLOSED:
            raise TransportError(f"connection to {self._who()} is closed")
        self.send_stream_data(self._control_id, encode_frame(msg, max_frame=self._config.max_frame))

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.state is _State.CLOSED:
            raise TransportError(f"connection to {self._who()} is closed")
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except (RuntimeError, ValueError) as exc:  # aioquic: stream reset, finished or unknown
            raise TransportError(f"stream {stream_id} to {self._who()} cannot send: {exc}") from exc
        self._data_queued = True
        self._transmit_soon()

    def transmit(self) -> None:
        """Send what QUIC has queued; a pending ACK rides along with stream data."""
        if self._data_queued:
            self._data_queued = False
            _ack_with_data(self._quic, self._loop.time())
        super().transmit()

    def send_credit(self, stream_id: int, limit: int) -> None:
        with contextlib.suppress(TransportError):
            self.send_control({TYPE_FIELD: "_credit", "s": stream_id, "o": limit})

    def reset_stream(self, stream_id: int, code: int) -> None:
        if self.state is not _State.CLOSED:
            with contextlib.suppress(RuntimeError, ValueError):
                self._quic.reset_stream(stream_id, code)
            self._transmit_soon()

    def stop_stream(self, stream_id: int, code: int) -> None:
        if self.state is not _State.CLOSED:
            with contextlib.suppress(RuntimeError, ValueError):
                self._quic.stop_stream(stream_id, code)
            self._transmit_soon()

    def open_stream(self, kind: str, header: Mapping[str, Any]) -> _Stream:
        if not isinstance(kind, str) or not kind or kind.startswith("_"):
            raise ConfigError(f"stream kind {kind!r} is empty or reserved")
        if self.state is not _State.READY:
            raise TransportError(f"connection to {self._who()} is not open")
        frame = encode_frame(
            {TYPE_FIELD: "_open", "kind": kind, "header": dict(header)}, max_frame=self._config.max_frame
        )
        stream_id = self._quic.get_next_available_stream_id()
        stream = _Stream(self, stream_id, kind, self._config.stream_window, self.peer_window)
        self._streams[stream_id] = stream
        self.send_stream_data(stream_id, frame)
        return stream

    def forget_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    # --- RTT and liveness -------------------------------------------------------------------

    @property
    def rtt(self) -> RttEstimator:
        return self._rtt

    def now(self) -> float:
        """This connection's clock (the event loop's), which RTT samples are timed on."""
        return self._loop.time()

    def _send_ping(self) -> int:
        self._ping_seq += 1
        while len(self._pings) >= _MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        with contextlib.suppress(TransportError):
            self.send_control({TYPE_FIELD: "_ping", "n": self._ping_seq})
            self.transmit()  # out now, and stamped as it leaves: queueing is not network time
        self._pings[self._ping_seq] = self._loop.time()
        return self._ping_seq

    async def probe(self, timeout: float) -> bool:
        """True if the peer answers a ping within `timeout`."""
        if self.state is not _State.READY:
            return False
        seq = self._send_ping()
        waiter = self._loop.create_future()
        self._probes[seq] = waiter
        try:
            await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, TransportError):
            return False
        finally:
            self._probes.pop(seq, None)
        return True

    async def _keep_alive(self) -> None:
        while self.state is _State.READY:
            await asyncio.sleep(self._config.keepalive_interval)
            if self.state is _State.READY:
                self._send_ping()

    # --- aioquic events ---------------------------------------------------------------------

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Feed a datagram (and, on a dialer's socket, the rest of its burst) to QUIC."""
        now = self._loop.time()
        self._arrival = now
        self._quic.receive_datagram(cast(bytes, data), addr, now=now)
        if self._sock is not None:
            _drain_socket(
                self._sock,
                self._transport,
                lambda more, sender: self._quic.receive_datagram(more, sender, now=now),
                self.error_received,
            )
        self._process_events()
        # aioquic transmits after every datagram. Deferring to the next loop turn sends one
        # answer for a whole burst, and lets a stream reader woken by this data go first: a
        # tunnel forwards it before the ACK is built (~50 us of Python saved on the way).
        self._transmit_soon()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        try:
            if isinstance(event, events.StreamDataReceived):
                self._on_stream_data(event)
            elif isinstance(event, events.StreamReset):
                self._on_stream_reset(event)
            elif isinstance(event, events.StopSendingReceived):
                self._on_stop_sending(event)
            elif isinstance(event, events.HandshakeCompleted):
                self._on_handshake_completed()
            elif isinstance(event, events.ConnectionTerminated):
                self._on_terminated(event)
        except Exception:
            # Never let a bug here escape into aioquic's datagram loop.
            log.exception("internal error handling %s from %s", type(event).__name__, self._who())
            self.close_with(CloseCode.PROTOCOL_ERROR, "internal error")

    def _on_handshake_completed(self) -> None:
        self.state = _State.AUTHENTICATING
        if not self.dialer:
            # A listener's protocol is created before the first datagram, so only now is the
            # peer's address known.
            self.remote_address = _display_address(self._quic.get_peer_address())
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(None)
        if not self.dialer:
            self.owner._accept_handshake(self)

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if self.state is not _State.CLOSED:
            # Closed by the peer or by aioquic (idle timeout, protocol violation).
            self.close_code = event.error_code
            if event.frame_type is None:
                self.close_reason = f"peer closed the connection ({_code_name(CloseCode, event.error_code)})"
                if event.reason_phrase and event.reason_phrase != _code_name(CloseCode, event.error_code):
                    self.close_reason += f": {event.reason_phrase}"
            elif event.reason_phrase == "Idle timeout":
                self.close_reason = f"no answer for {self._config.idle_timeout:g} s (idle timeout)"
            else:
                self.close_reason = f"QUIC error {event.error_code:#x}: {event.reason_phrase or 'no reason'}"
        self._enter_closed(self.close_reason)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(PeerUnreachable(f"{self.remote_address}: {self.close_reason}"))
        if self.udp is not None:
            self.udp.close()

    def _enter_closed(self, reason: str) -> None:
        if self.state is _State.CLOSED:
            return
        self.state = _State.CLOSED
        exc = TransportError(f"connection to {self._who()} lost: {reason}")
        for stream in list(self._streams.values()):
            stream.reader._fail(exc)
            stream.writer._fail(exc)
        self._streams.clear()
        self._opening.clear()
        self._early.clear()
        self._inbox_event.set()
        for waiter in self._probes.values():
            if not waiter.done():
                waiter.set_exception(_fresh(exc))
        if self._keepalive is not None:
            self._keepalive.cancel()
        self.owner._connection_closed(self, reason)

    def _is_remote(self, stream_id: int) -> bool:
        return bool(stream_id & 1) == self.dialer  # client-initiated ids are even

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        if stream_id == self._control_id:
            self._on_control_data(event.data, event.end_stream)
            return
        if stream_id & 2:  # unidirectional: not part of this protocol
            self.stop_stream(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        if self.state is not _State.READY:
            self._hold_early(event, len(event.data))
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            if event.data:
                stream.reader._feed(event.data)
            if event.end_stream:
                stream.reader._feed_eof()
        elif stream_id in self._opening or (
            self._is_remote(stream_id) and stream_id > self._highest_remote_stream
        ):
            self._on_opening_data(stream_id, event.data, event.end_stream)
        # else: late data for a stream we already finished with or reset; drop it.

    def _hold_early(self, event: events.QuicEvent, size: int) -> None:
        stream_id = getattr(event, "stream_id", -1)
        # Only a dialer waiting for the listener's proof may see listener streams early (they
        # can overtake the proof on the wire). Anyone else opening streams before
        # authentication gets them reset, and learns nothing from them.
        if self.dialer and self.state is _State.AUTHENTICATING and self._is_remote(stream_id):
            self._early_bytes += size
            if self._early_bytes > 4 * self._config.stream_window:
                self.close_with(CloseCode.PROTOCOL_ERROR, "peer sent too much before authenticating")
                return
            self._early.append(event)
            return
        self.reset_stream(stream_id, StreamCode.NOT_AUTHENTICATED)
        self.stop_stream(stream_id, StreamCode.NOT_AUTHENTICATED)

    def _on_opening_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._highest_remote_stream = max(self._highest_remote_stream, stream_id)
        buffer = self._opening.setdefault(stream_id, bytearray())
        buffer += data
        try:
            decoded = try_decode_frame(buffer, self._config.max_frame)
        except WireError as exc:
            del self._opening[stream_id]
            log.warning("reset stream %d from %s: bad open frame: %s", stream_id, self._who(), exc)
            self._refuse(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        if decoded is None:
            if end_stream:
                del self._opening[stream_id]
                self._refuse(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        msg, used = decoded
        rest = bytes(buffer[used:])
        del self._opening[stream_id]
        kind, header = msg.get("kind"), msg.get("header", {})
        if msg[TYPE_FIELD] != "_open" or not isinstance(kind, str) or not isinstance(header, dict):
            self._refuse(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        handler = self.owner._stream_handlers.get(kind)
        if handler is None:
            log.info("reset stream of unknown kind %r from %s", kind, self._who())
            self._refuse(stream_id, StreamCode.UNKNOWN_KIND)
            return
        stream = _Stream(self, stream_id, kind, self._config.stream_window, self.peer_window)
        self._streams[stream_id] = stream
        if rest:
            stream.reader._feed(rest)
        if end_stream:
            stream.reader._feed_eof()
        self.owner._run_stream_handler(self, stream, handler, header)

    def _refuse(self, stream_id: int, code: StreamCode) -> None:
        self.reset_stream(stream_id, code)
        self.stop_stream(stream_id, code)

    def _on_stream_reset(self, event: events.StreamReset) -> None:
        if self.state is not _State.READY and self.state is not _State.CLOSED:
            self._hold_early(event, 0)
            return
        self._opening.pop(event.stream_id, None)
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            reason = _code_name(StreamCode, event.error_code)
            stream.reader._fail(
                TransportError(f"{self._who()} reset its side of stream {stream.kind!r} ({reason})")
            )

    def _on_stop_sending(self, event: events.StopSendingReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            reason = _code_name(StreamCode, event.error_code)
            stream.writer._fail(
                TransportError(f"{self._who()} stopped reading stream {stream.kind!r} ({reason})")
            )

    def _on_control_data(self, data: bytes, end_stream: bool) -> None:
        try:
            messages = self._decoder.feed(data)
        except WireError as exc:
            self.close_with(CloseCode.PROTOCOL_ERROR, f"bad control frame: {exc}")
            return
        for msg in messages:
            if self.state is _State.READY:
                self._on_control_message(msg)
            elif self.state is not _State.CLOSED:
                if len(self._inbox) >= _MAX_PENDING_MESSAGES:
                    self.close_with(
                        CloseCode.PROTOCOL_ERROR, "peer sent too many messages before authenticating"
                    )
                    return
                self._inbox.append(msg)
                self._inbox_event.set()
        if end_stream and self.state is not _State.CLOSED:
            self.close_with(CloseCode.PROTOCOL_ERROR, "peer ended its control stream")

    def _on_control_message(self, msg: dict[str, Any]) -> None:
        kind = msg[TYPE_FIELD]
        if kind == "_credit":
            stream_id, limit = msg.get("s"), msg.get("o")
            if isinstance(stream_id, int) and isinstance(limit, int):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream.writer._credit(limit)
        elif kind == "_ping":
            with contextlib.suppress(TransportError):
                # Say how long the ping waited here, so the sender can take it out of the RTT.
                held = max(0.0, self._loop.time() - self._arrival)
                self.send_control({TYPE_FIELD: "_pong", "n": msg.get("n"), "h": round(held, 6)})
                self.transmit()
        elif kind == "_pong":
            seq, held = msg.get("n"), msg.get("h", 0.0)
            if isinstance(seq, int) and (sent := self._pings.pop(seq, None)) is not None:
                held = float(held) if isinstance(held, int | float) and 0 <= held < 10 else 0.0
                # Timed at the pong datagram's arrival, not when this burst got processed.
                self._rtt.sample(self._arrival - sent - held, self._loop.time())
                _wake(self._probes.get(seq))
        elif kind.startswith("_"):
            log.debug("ignoring unknown transport message %r from %s", kind, self._who())
        else:
            self.owner._deliver_message(self, msg)

    def _who(self) -> str:
        return self.peer_id[:8] if self.peer_id else self.remote_address


# --- public link ------------------------------------------------------------------------------


class PeerLink:
    """An authenticated connection to one peer: control messages, typed streams, RTT."""

    def __init__(self, conn: _Connection) -> None:
        assert conn.peer_id is not None
        self._conn = conn
        self.node_id: str = conn.peer_id
        self.remote_address: str = conn.remote_address
        self.initiated_locally: bool = conn.dialer

    @property
    def short_id(self) -> str:
        """First 8 characters of the peer's node id."""
        return self.node_id[:8]

    @property
    def is_open(self) -> bool:
        """False once the connection has closed for any reason."""
        return self._conn.state is _State.READY

    @property
    def rtt_ms(self) -> float | None:
        """Smoothed round-trip time to the peer in ms (EWMA of pings), for display; None until measured."""
        rtt = self._conn.rtt.smoothed
        return None if rtt is None else rtt * 1000.0

    @property
    def rtt_min_ms(self) -> float | None:
        """The smallest round trip of the last 30 s in ms, for decisions; None until measured."""
        rtt = self._conn.rtt.minimum(self._conn.now())
        return None if rtt is None else rtt * 1000.0

    @property
    def close_reason(self) -> str:
        """Why the link closed ("" while open)."""
        return self._conn.close_reason

    def send(self, msg: Mapping[str, Any]) -> None:
        """Send one message on the control stream; ordered, reliable, never blocks.

        Raises MalformedFrame/FrameTooLarge for a message that cannot be framed (types starting
        with "_" are reserved) and TransportError if the link is closed.
        """
        kind = msg.get(TYPE_FIELD) if isinstance(msg, Mapping) else None
        if isinstance(kind, str) and kind.startswith("_"):
            raise MalformedFrame(f"message type {kind!r} is reserved for the transport")
        self._conn.send_control(msg)

    async def open_stream(
        self, kind: str, header: Mapping[str, Any] | None = None
    ) -> tuple[MeshStreamReader, MeshStreamWriter]:
        """Open a bidirectional byte stream of `kind`; the peer's handler gets `header`.

        Returns at once (no round trip). If the peer has no handler for `kind` it resets the
        stream, which surfaces as TransportError on the next read or drain.
        """
        stream = self._conn.open_stream(kind, header or {})
        return stream.reader, stream.writer

    async def ping(self, timeout: float = 1.0) -> bool:
        """True if the peer answers a ping within `timeout` seconds (also updates rtt_ms)."""
        return await self._conn.probe(timeout)

    def close(self, reason: str = "closed") -> None:
        """Close the connection now (goodbye); unsent stream data is dropped."""
        self._conn.close_with(CloseCode.GOODBYE, f"closed locally: {reason}", tell_peer=reason)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"PeerLink({self.short_id} at {self.remote_address}, {state}, rtt={_ms_text(self.rtt_ms)})"


# --- the endpoint -----------------------------------------------------------------------------


class _Claim:
    """An outgoing dial to a known node id: later dials wait on it; listeners consult it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.future: asyncio.Future[PeerLink] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.reached = False  # the peer answered our hello: our connection can win a race


@dataclass
class _Dial:
    expected: str | None
    deadline: float
    claim: _Claim | None = None


class MeshTransport:
    """This node's QUIC endpoint: listens, dials, authenticates, and keeps one link per peer.

    Callbacks (plain functions; one returning an awaitable has it run as a task):
      on_message(peer_id, msg)       every application message from any peer, in order per peer
      on_peer_connected(link)        a peer got a link, or its link was replaced by a newer one
      on_peer_lost(peer_id, reason)  a peer's link ended and no replacement exists
    Incoming streams go to handlers registered with `on_stream(kind, handler)`.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        credentials: MeshCredentials,
        *,
        host: str = "::",
        port: int = 0,
        config: TransportConfig | None = None,
    ) -> None:
        self.identity = identity
        self.credentials = credentials
        self.config = config or TransportConfig()
        self.on_message: MessageHandler | None = None
        self.on_peer_connected: Callable[[PeerLink], object] | None = None
        self.on_peer_lost: Callable[[str, str], object] | None = None
        self._host = host
        self._requested_port = port
        self._port = 0
        self._server: QuicServer | None = None
        self._closed = False
        self._stream_handlers: dict[str, StreamHandler] = {}
        self._links: dict[str, PeerLink] = {}
        self._claims: dict[str, _Claim] = {}
        self._link_waiters: dict[str, list[asyncio.Future[PeerLink]]] = {}
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        certificate, _ = identity.tls_certificate()
        self._certificate_hash = _certificate_hash(certificate)

    # --- properties -------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.identity.node_id

    @property
    def port(self) -> int:
        """The bound UDP port (0 before start())."""
        return self._port

    @property
    def links(self) -> dict[str, PeerLink]:
        """A snapshot of the current links by peer node id."""
        return dict(self._links)

    def link(self, node_id: str) -> PeerLink | None:
        """The open link to `node_id`, if any."""
        return self._links.get(node_id)

    def on_stream(self, kind: str, handler: StreamHandler) -> None:
        """Handle incoming streams of `kind` with `async handler(peer_id, header, reader, writer)`.

        When the handler returns, the writer is closed (EOF) if it was not, and the peer is told
        to stop sending if the handler did not read to EOF. If it raises, the stream is reset.
        Streams of a kind with no handler are reset.
        """
        if not kind or kind.startswith("_"):
            raise ConfigError(f"stream kind {kind!r} is empty or reserved")
        self._stream_handlers[kind] = handler

    # --- start and stop ---------------------------------------------------------------------

    async def start(self) -> int:
        """Bind the UDP socket and start accepting connections; return the bound port."""
        if self._server is not None or self._closed:
            raise TransportError("a transport can be started once")
        sock = self._bind_socket()
        loop = asyncio.get_running_loop()
        configuration = self._quic_configuration(is_client=False, same_host=False)
        same_host_configuration = self._quic_configuration(is_client=False, same_host=True)
        create_protocol = functools.partial(_Connection, owner=self, dialer=False)
        try:
            _, server = await loop.create_datagram_endpoint(
                lambda: _Listener(
                    configuration=configuration,
                    same_host_configuration=same_host_configuration,
                    create_protocol=create_protocol,
                    sock=sock,
                ),
                sock=sock,
            )
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen on UDP {self._host}:{self._requested_port}: {exc}") from exc
        self._server = server
        self._port = sock.getsockname()[1]
        log.info(
            "node %s listening on UDP %s", self.identity.short_id, format_address(self._host, self._port)
        )
        return self._port

    async def close(self) -> None:
        """Close every connection (peers see a shutdown code), stop listening, stop all tasks."""
        if self._closed:
            return
        self._closed = True
        connections = list(self._connections)
        for conn in connections:
            conn.close_with(CloseCode.SHUTDOWN, "transport closed", tell_peer="shutting down")
        # Give CONNECTION_CLOSE frames and the closing period a moment; never wait long.
        if connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(conn.wait_closed() for conn in connections), return_exceptions=True),
                    self.config.close_timeout,
                )
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), self.config.close_timeout
                )
        for conn in connections:
            if conn.udp is not None:
                conn.udp.close()
        if self._server is not None:
            self._server.close()
        for claim in self._claims.values():
            if not claim.future.done():
                claim.future.set_exception(TransportError("transport closed"))
        for waiters in self._link_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(TransportError("transport closed"))

    def _bind_socket(self) -> socket.socket:
        try:
            ip = ipaddress.ip_address(self._host)
        except ValueError as exc:
            raise ConfigError(
                f"bind host {self._host!r} must be an IP address such as :: or 0.0.0.0"
            ) from exc
        try:
            if ip.version == 6:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                if ip.is_unspecified:
                    # Dual-stack: IPv4 peers arrive as ::ffff:a.b.c.d on the same socket.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                address: tuple[Any, ...] = (self._host, self._requested_port, 0, 0)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                address = (self._host, self._requested_port)
        except OSError as exc:
            if ip.version == 6 and ip.is_unspecified:
                log.warning("no IPv6 on this host (%s); listening on IPv4 only", exc)
                self._host = "0.0.0.0"
                return self._bind_socket()
            raise TransportError(f"cannot create a UDP socket: {exc}") from exc
        try:
            _enlarge_buffers(sock)
            sock.bind(address)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TransportError(
                f"cannot listen on UDP {format_address(self._host, self._requested_port)}: {exc.strerror or exc}"
            ) from exc
        return sock

    def _quic_configuration(self, *, is_client: bool, same_host: bool) -> QuicConfiguration:
        certificate, private_key = self.identity.tls_certificate()
        configuration = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=self.config.idle_timeout,
            max_datagram_size=(
                self.config.same_host_datagram_size if same_host else self.config.max_datagram_size
            ),
            # Certificates are self-signed; the node-id check after the handshake replaces PKI.
            verify_mode=ssl.CERT_NONE,
            server_name="mesh-llm",
        )
        if not is_client:
            configuration.certificate = certificate
            configuration.private_key = private_key
        return configuration

    # --- dialing ----------------------------------------------------------------------------

    async def dial(
        self,
        addresses: Iterable[str],
        expected_node_id: str | None = None,
        timeout: float | None = None,
    ) -> PeerLink:
        """Connect to a peer at any of `addresses` ("host:port"), tried concurrently.

        Returns the existing link if there already is one to that node (either direction).
        Raises AuthenticationError if a peer answered but failed authentication (wrong mesh,
        wrong secret, not `expected_node_id`), PeerUnreachable if nothing answered in time.
        """
        self._check_running()
        loop = asyncio.get_running_loop()
        timeout = self.config.dial_timeout if timeout is None else timeout
        dial = _Dial(expected_node_id, loop.time() + timeout)
        if expected_node_id is not None:
            if not is_node_id(expected_node_id):
                raise ConfigError(f"{expected_node_id!r} is not a node id")
            if expected_node_id == self.node_id:
                raise ConfigError("refusing to dial this node's own id")
            link = self._links.get(expected_node_id)
            if link is not None:
                return link
            claim = self._claims.get(expected_node_id)
            if claim is not None:
                return await self._await_claim(claim, dial.deadline)
        addresses = list(addresses)
        targets: list[tuple[str, int]] = []
        problems: list[TransportError] = []
        for address in addresses:
            try:
                targets.append(parse_address(address))
            except ConfigError as exc:
                problems.append(PeerUnreachable(str(exc)))
        who = f"node {expected_node_id[:8]}" if expected_node_id else "peer"
        if not targets:
            raise PeerUnreachable(
                f"no usable address for {who}: {'; '.join(map(str, problems)) or 'none given'}"
            )
        if expected_node_id is not None:
            dial.claim = self._claim(expected_node_id)
        try:
            link = await self._dial_targets(targets, dial, problems)
        except BaseException as exc:
            if dial.claim is not None and not dial.claim.future.done():
                if isinstance(exc, Exception):
                    dial.claim.future.set_exception(exc)
                else:
                    dial.claim.future.cancel()
            raise
        finally:
            if dial.claim is not None and self._claims.get(dial.claim.node_id) is dial.claim:
                del self._claims[dial.claim.node_id]
        if dial.claim is not None and not dial.claim.future.done():
            dial.claim.future.set_result(link)
        return link

    def _claim(self, node_id: str) -> _Claim:
        claim = _Claim(node_id)
        self._claims[node_id] = claim
        return claim

    async def _await_claim(self, claim: _Claim, deadline: float) -> PeerLink:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.shield(claim.future), max(remaining, 0))
        except TimeoutError:
            raise PeerUnreachable(
                f"timed out waiting for a dial to node {claim.node_id[:8]} in progress"
            ) from None

    async def _dial_targets(
        self, targets: list[tuple[str, int]], dial: _Dial, problems: list[TransportError]
    ) -> PeerLink:
        loop = asyncio.get_running_loop()
        attempts = [
            loop.create_task(
                self._connect(host, port, dial.deadline), name=f"dial {format_address(host, port)}"
            )
            for host, port in targets
        ]
        winner: _Connection | None = None
        try:
            pending: set[asyncio.Task[_Connection]] = set(attempts)
            while pending:
                remaining = dial.deadline - loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                # Every address that completed a handshake gets its turn at authentication, in
                # the order they answered: a stale address may now belong to another node.
                for task in done:
                    exc = None if task.cancelled() else task.exception()
                    if exc is not None:
                        problems.append(exc if isinstance(exc, TransportError) else PeerUnreachable(str(exc)))
                        continue
                    conn = task.result()
                    try:
                        link = await self._authenticate_outgoing(conn, dial)
                    except TransportError as auth_exc:
                        problems.append(auth_exc)
                        continue
                    winner = conn
                    return link
        finally:
            for task in attempts:
                task.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
            for task in attempts:
                if not task.cancelled() and task.exception() is None and task.result() is not winner:
                    task.result().abort("another address answered first")
        raise self._dial_failure(targets, dial, problems)

    def _dial_failure(
        self, targets: list[tuple[str, int]], dial: _Dial, problems: list[TransportError]
    ) -> TransportError:
        who = f"node {dial.expected[:8]}" if dial.expected else "peer"
        where = ", ".join(format_address(h, p) for h, p in targets)
        auth = [p for p in problems if isinstance(p, AuthenticationError)]
        if auth:
            return AuthenticationError("; ".join(str(p) for p in auth))
        detail = "; ".join(str(p) for p in problems) or "no answer before the deadline"
        return PeerUnreachable(f"could not reach {who} at {where}: {detail}")

    async def _connect(self, host: str, port: int, deadline: float) -> _Connection:
        """QUIC + TLS handshake with one address; the caller authenticates the result."""
        loop = asyncio.get_running_loop()
        deadline = min(deadline, loop.time() + self.config.handshake_timeout)
        shown = format_address(host, port)
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), max(deadline - loop.time(), 0)
            )
        except TimeoutError:
            raise PeerUnreachable(f"{shown}: name lookup timed out") from None
        except OSError as exc:
            raise PeerUnreachable(f"{shown}: cannot resolve ({exc.strerror or exc})") from exc
        if not infos:
            raise PeerUnreachable(f"{shown}: no address")
        family, _, _, _, sockaddr = infos[0]
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise PeerUnreachable(f"{shown}: cannot create a socket ({exc.strerror or exc})") from exc
        conn: _Connection | None = None
        try:
            _enlarge_buffers(sock)
            sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
            # A connected socket receives ICMP errors: a dead address fails fast.
            sock.connect(sockaddr)
            sock.setblocking(False)
            same_host = _is_same_host(str(sockaddr[0]))
            quic = QuicConnection(configuration=self._quic_configuration(is_client=True, same_host=same_host))
            udp, protocol = await loop.create_datagram_endpoint(
                lambda: _Connection(quic, owner=self, dialer=True, sock=sock), sock=sock
            )
            conn = protocol
            conn.udp = udp
            conn.remote_address = shown
            conn.connect(sockaddr)
            await conn.wait_handshake(deadline)
            return conn
        except OSError as exc:
            if conn is None:
                sock.close()
            raise PeerUnreachable(f"{shown}: {exc.strerror or exc}") from exc
        except BaseException:
            if conn is None:
                sock.close()
            raise
        finally:
            if conn is not None and conn.state is _State.HANDSHAKING:
                conn.abort("handshake did not finish")

    async def _authenticate_outgoing(self, conn: _Connection, dial: _Dial) -> PeerLink:
        """Run the dialer's half of mesh authentication on a fresh connection."""
        where = conn.remote_address
        ours = _Hello(
            self.credentials.mesh_id, self.node_id, os.urandom(_NONCE_BYTES), self.config.stream_window
        )
        theirs: _Hello | None = None
        try:
            conn.send_control(ours.message())
            msg = await conn.next_auth_message(dial.deadline)
            try:
                theirs = _parse_hello(msg)
            except AuthenticationError as exc:
                conn.close_with(CloseCode.AUTH_FAILED, str(exc))
                raise AuthenticationError(f"{where}: {exc}") from None
            if theirs.mesh_id != self.credentials.mesh_id:
                conn.close_with(CloseCode.WRONG_MESH, "peer is in another mesh")
                raise AuthenticationError(f"{where} belongs to a different mesh")
            certificate = conn.peer_certificate()
            if certificate is None or _certificate_node_id(certificate) != theirs.node_id:
                conn.close_with(CloseCode.AUTH_FAILED, "TLS key does not match claimed node id")
                raise AuthenticationError(
                    f"{where}: its TLS key is not the node id {theirs.node_id[:8]} it claims"
                )
            if dial.expected is not None and theirs.node_id != dial.expected:
                conn.close_with(CloseCode.AUTH_FAILED, "not the node we meant to reach")
                raise AuthenticationError(
                    f"{where} is node {theirs.node_id[:8]}, not the expected {dial.expected[:8]}"
                )
            if theirs.node_id == self.node_id:
                conn.close_with(CloseCode.AUTH_FAILED, "dialed ourselves")
                raise AuthenticationError(f"{where} is this node itself")
            existing = self._links.get(theirs.node_id)
            if existing is not None:
                conn.close_with(CloseCode.DUPLICATE, "already connected")
                return existing
            if dial.claim is None:
                other = self._claims.get(theirs.node_id)
                if other is not None:
                    conn.close_with(CloseCode.DUPLICATE, "another dial to this node is in progress")
                    return await self._await_claim(other, dial.deadline)
                dial.claim = self._claim(theirs.node_id)
            dial.claim.reached = True
            assert certificate is not None
            transcript = _transcript(self.credentials.mesh_id, _certificate_hash(certificate), ours, theirs)
            conn.send_control(_make_proof(_CLIENT_ROLE, self.credentials.secret, self.identity, transcript))
            msg = await conn.next_auth_message(dial.deadline)
            if not _proof_is_valid(_SERVER_ROLE, self.credentials.secret, theirs.node_id, transcript, msg):
                conn.close_with(CloseCode.AUTH_FAILED, "peer failed to authenticate")
                raise AuthenticationError(
                    f"{where} (node {theirs.node_id[:8]}) did not prove it holds the mesh secret and its node key"
                )
            return self._install(conn, theirs)
        except TimeoutError:
            conn.close_with(CloseCode.AUTH_TIMEOUT, "authentication timed out")
            raise PeerUnreachable(f"{where}: authentication did not finish before the deadline") from None
        except _ConnectionGone as gone:
            if gone.code == CloseCode.DUPLICATE and theirs is not None:
                # The listener keeps a connection it prefers (see the module docstring).
                return await self._wait_for_link(theirs.node_id, dial.deadline)
            raise self._refusal(where, gone) from None
        except BaseException:
            conn.close_with(CloseCode.GOODBYE, "dial cancelled")
            raise

    def _refusal(self, where: str, gone: _ConnectionGone) -> TransportError:
        if gone.code == CloseCode.WRONG_MESH:
            return AuthenticationError(
                f"{where} refused us: it belongs to a different mesh (check the invite token)"
            )
        if gone.code == CloseCode.AUTH_FAILED:
            return AuthenticationError(f"{where} refused our credentials (wrong mesh secret?)")
        if gone.code == CloseCode.SHUTDOWN:
            return PeerUnreachable(f"{where} is shutting down")
        return PeerUnreachable(f"{where} closed the connection during authentication: {gone}")

    async def _wait_for_link(self, node_id: str, deadline: float) -> PeerLink:
        link = self._links.get(node_id)
        if link is not None:
            return link
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PeerLink] = loop.create_future()
        self._link_waiters.setdefault(node_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
        except TimeoutError:
            raise PeerUnreachable(
                f"node {node_id[:8]} kept its own connection to us, but it did not complete in time"
            ) from None
        finally:
            waiters = self._link_waiters.get(node_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._link_waiters.pop(node_id, None)

    # --- accepting --------------------------------------------------------------------------

    def _accept_handshake(self, conn: _Connection) -> None:
        if self._closed:
            conn.close_with(CloseCode.SHUTDOWN, "transport closed", tell_peer="shutting down")
            return
        self._spawn(self._authenticate_incoming(conn), name=f"auth {conn.remote_address}")

    async def _authenticate_incoming(self, conn: _Connection) -> None:
        """Run the listener's half of mesh authentication; close the connection on any failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.auth_timeout
        where = conn.remote_address
        try:
            try:
                theirs = _parse_hello(await conn.next_auth_message(deadline))
            except AuthenticationError as exc:
                log.info("refused %s: %s", where, exc)
                conn.close_with(CloseCode.AUTH_FAILED, str(exc), tell_peer="authentication failed")
                return
            if theirs.mesh_id != self.credentials.mesh_id:
                log.info("refused %s: it is in another mesh (%s)", where, theirs.mesh_id.hex())
                conn.close_with(CloseCode.WRONG_MESH, "peer is in another mesh")
                return
            if theirs.node_id == self.node_id:
                conn.close_with(
                    CloseCode.AUTH_FAILED, "peer claims our own node id", tell_peer="authentication failed"
                )
                return
            ours = _Hello(
                self.credentials.mesh_id, self.node_id, os.urandom(_NONCE_BYTES), self.config.stream_window
            )
            conn.send_control(ours.message())
            proof = await conn.next_auth_message(deadline)
            transcript = _transcript(self.credentials.mesh_id, self._certificate_hash, theirs, ours)
            if not _proof_is_valid(_CLIENT_ROLE, self.credentials.secret, theirs.node_id, transcript, proof):
                log.warning("refused %s: it did not prove the mesh secret and node key it claims", where)
                conn.close_with(
                    CloseCode.AUTH_FAILED, "peer failed to authenticate", tell_peer="authentication failed"
                )
                return
            if not await self._admit(theirs.node_id):
                conn.close_with(CloseCode.DUPLICATE, "duplicate connection", tell_peer="already connected")
                return
            if conn.state is _State.CLOSED:
                return
            conn.send_control(_make_proof(_SERVER_ROLE, self.credentials.secret, self.identity, transcript))
            self._install(conn, theirs)
        except TimeoutError:
            log.info("refused %s: no authentication within %g s", where, self.config.auth_timeout)
            conn.close_with(CloseCode.AUTH_TIMEOUT, "authentication timed out")
        except (_ConnectionGone, TransportError) as exc:
            log.debug("connection from %s ended during authentication: %s", where, exc)
            conn.close_with(CloseCode.GOODBYE, "connection ended during authentication")

    async def _admit(self, node_id: str) -> bool:
        """Whether an authenticated incoming connection from `node_id` should become its link.

        The connection initiated by the lower node id wins when both exist; a peer that dials
        us again while we hold a link it initiated has evidently lost that link (restart).
        """
        existing = self._links.get(node_id)
        if existing is None:
            claim = self._claims.get(node_id)
            if claim is None or node_id < self.node_id:
                return True
            if claim.reached:
                return False
            # Our own dial to them is under way and is the one that should win; if we decided
            # before it heard back, the two sides could settle on different connections (or on
            # theirs). Give it a moment to settle; a dial to a dead address does not hold us long.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(claim.future), self.config.liveness_probe_timeout)
            existing = self._links.get(node_id)
            if existing is None:
                return True
        if not existing.initiated_locally or node_id < self.node_id:
            return True
        # We dialed them before and they are the higher id, so our link should win, unless it
        # is dead and they restarted: ask it.
        alive = await existing.ping(self.config.liveness_probe_timeout)
        return not (alive and self._links.get(node_id) is existing)

    # --- links ------------------------------------------------------------------------------

    def _install(self, conn: _Connection, hello: _Hello) -> PeerLink:
        conn.peer_id = hello.node_id
        conn.peer_window = hello.window
        link = PeerLink(conn)
        old = self._links.get(hello.node_id)
        self._links[hello.node_id] = link
        if old is not None:
            old._conn.close_with(CloseCode.DUPLICATE, "replaced by a newer connection", tell_peer="replaced")
        conn.become_ready(link)
        log.info(
            "linked with %s at %s (%s)",
            link.short_id,
            link.remote_address,
            "dialed" if conn.dialer else "accepted",
        )
        self._notify(self.on_peer_connected, link)
        for waiter in self._link_waiters.pop(hello.node_id, []):
            if not waiter.done():
                waiter.set_result(link)
        return link

    def _connection_closed(self, conn: _Connection, reason: str) -> None:
        self._connections.discard(conn)
        if conn.link is not None and self._links.get(conn.link.node_id) is conn.link:
            del self._links[conn.link.node_id]
            log.info("lost %s: %s", conn.link.short_id, reason)
            self._notify(self.on_peer_lost, conn.link.node_id, reason)

    def _deliver_message(self, conn: _Connection, msg: dict[str, Any]) -> None:
        assert conn.peer_id is not None
        self._notify(self.on_message, conn.peer_id, msg)

    def _run_stream_handler(
        self, conn: _Connection, stream: _Stream, handler: StreamHandler, header: dict[str, Any]
    ) -> None:
        assert conn.peer_id is not None
        self._spawn(
            self._stream_task(conn.peer_id, stream, handler, header),
            name=f"stream {stream.kind} {conn.peer_id[:8]}",
        )

    async def _stream_task(
        self, peer_id: str, stream: _Stream, handler: StreamHandler, header: dict[str, Any]
    ) -> None:
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
                stream.reader._fail(TransportError("stream handler finished"))

    # --- helpers ----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._server is None:
            raise TransportError("the transport is not started")
        if self._closed:
            raise TransportError("the transport is closed")

    def _spawn(self, awaitable: Awaitable[Any], name: str | None = None) -> None:
        task = asyncio.ensure_future(awaitable)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transport task %s failed", task.get_name(), exc_info=task.exception())

    def _notify(self, callback: Callable[..., object] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                self._spawn(result, name=f"callback {getattr(callback, '__name__', 'callback')}")
        except Exception:
            log.exception("transport callback %r failed", callback)


def _enlarge_buffers(sock: socket.socket) -> None:
    # Bursts of datagrams overflow the default ~200 KiB socket buffers and turn into loss; ask
    # for more and take what the kernel grants.
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER_BYTES)


def _is_same_host(host: str) -> bool:
    """Whether datagrams to `host` stay inside this machine: loopback, or one of our own addresses.

    Only then is the path MTU known (the loopback interface's) without path MTU discovery, which
    aioquic does not do. Not cached: an address that is ours now may be another host's later.
    """
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    if ip.is_unspecified or ip.is_multicast:
        return False
    # The kernel routes a local address to itself and picks that very address as the source;
    # connecting a UDP socket only looks the route up, it sends nothing.
    try:
        with socket.socket(
            socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM
        ) as probe:
            probe.connect((str(ip), 9))
            source = str(probe.getsockname()[0])
    except OSError:
        return False
    return source.split("%")[0] == str(ip)


def _ack_with_data(quic: QuicConnection, now: float) -> None:
    """Let the packets about to carry stream data also carry the pending ACK, if any.

    aioquic puts an ACK into a packet only once its delay (1 ms) has run out, and then sends
    it alone. A request/response exchange faster than that (a tunneled RPC call) so sends
    each ACK as an extra datagram about 1 ms after the data: ~1.4 extra datagrams per round
    trip, each a wake-up and ~100 us of Python on both nodes. Acknowledging early is always
    allowed (RFC 9000 section 13.2.1). aioquic has no API for it, so this moves the ACK's due
    time in its packet space; if a future aioquic renames those, this quietly does nothing.
    """
    spaces = getattr(quic, "_spaces", None)
    space = spaces.get(tls.Epoch.ONE_RTT) if isinstance(spaces, dict) else None
    if space is not None and isinstance(getattr(space, "ack_at", None), float) and space.ack_at > now:
        space.ack_at = now


def _drain_socket(
    sock: socket.socket,
    transport: asyncio.BaseTransport | None,
    handle: Callable[[bytes, Any], None],
    on_error: Callable[[Exception], None],
) -> None:
    """Hand `handle` the datagrams already queued on `sock`, up to _DRAIN_BATCH of them.

    asyncio reads one datagram per event-loop turn, and aioquic answers each with a transmit,
    so a burst of n datagrams would cost n loop turns, n transmits, and n wake-ups of the
    stream reader (n writes to a tunnel's TCP socket). Called from datagram_received, this
    reads the rest of the burst at once; the level-triggered selector reports what is left.
    """
    for _ in range(_DRAIN_BATCH):
        if transport is None or transport.is_closing():
            return
        try:
            data, addr = sock.recvfrom(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. an ICMP error queued on a dialer's connected socket
            on_error(exc)
            return
        handle(data, addr)


class _Listener(QuicServer):
    """aioquic's server, choosing each connection's datagram size and reading bursts at once."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        same_host_configuration: QuicConfiguration,
        create_protocol: Callable[..., _Connection],
        sock: socket.socket,
    ) -> None:
        super().__init__(configuration=configuration, create_protocol=create_protocol)
        self._configurations = {False: configuration, True: same_host_configuration}
        self._sock = sock

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._receive(data, addr)
        _drain_socket(self._sock, self._transport, self._receive, self.error_received)

    def _receive(self, data: bytes | str, addr: Any) -> None:
        if isinstance(data, bytes) and data and data[0] & 0x80:
            # A long header packet: maybe the Initial of a new connection, which aioquic's
            # server creates with its self._configuration. Ours differ only in
            # max_datagram_size, so switching is safe for the rest it reads from them
            # (connection id length, versions). Short header packets (all data) skip this.
            self._configuration = self._configurations[_is_same_host(str(addr[0]))]
        super().datagram_received(data, addr)
