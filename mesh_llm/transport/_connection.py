"""One QUIC connection as the mesh sees it: an asyncio adapter over either engine's connection.

The adapter only feeds datagrams in and sends datagrams out, as aioquic's own asyncio protocol
does, plus what the mesh needs on top: the authentication inbox, the control stream, typed data
streams and their credit, and a keepalive that samples the RTT.

A connection becomes a `PeerLink` only after mutual authentication on its control stream (the
dialer's first bidirectional stream, id 0); before that, nothing else is accepted from the peer.

Packets: a burst of datagrams is read in one go and answered with one transmit, on the next
loop turn (so a stream reader woken by the data goes first), and a pending ACK rides along with
stream data instead of following it in a datagram of its own.

Liveness: a `_ping` every `keepalive_interval` keeps the connection busy and feeds the RTT
estimator; QUIC's idle timeout closes a connection whose peer stopped answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mesh_llm.errors import ConfigError, MalformedFrame, PeerUnreachable, TransportError, WireError
from mesh_llm.mesh.rtt import RttEstimator
from mesh_llm.mesh.token import format_address
from mesh_llm.mesh.wire import TYPE_FIELD, FrameDecoder, encode_frame, try_decode_frame
from mesh_llm.transport._codes import CloseCode, StreamCode, code_name
from mesh_llm.transport._compat import QuicEngine
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter, Stream, fresh, wake
from mesh_llm.transport._udp import drain_socket, send_datagrams

if TYPE_CHECKING:
    from mesh_llm.transport._endpoint import MeshTransport

log = logging.getLogger("mesh_llm.transport")

MAX_PENDING_MESSAGES = 256
MAX_OUTSTANDING_PINGS = 16
ACK_DELAY = 0.001
SMALL_BURST = 8  # datagrams; a tunneled RPC request of 9.6 KB is 7 at 1472 bytes


def ms_text(ms: float | None) -> str:
    return "unmeasured" if ms is None else f"{ms:.2f} ms"


def display_address(addr: Any) -> str:
    """'host:port' for a socket address, with IPv4-mapped IPv6 shown as plain IPv4."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "?"
    host = str(addr[0])
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            host = str(ip.ipv4_mapped)
    return format_address(host, int(addr[1]))


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSED = "closed"


class ConnectionGone(Exception):
    """Internal: the connection ended while authentication was waiting for the peer."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Connection(asyncio.DatagramProtocol):
    """One QUIC connection: authentication inbox, control stream, data streams, keepalive.

    A dialer's connection owns its socket (asyncio calls `connection_made` and
    `datagram_received` on it); a listener's shares the listening socket, whose listener routes
    datagrams here and lends `sendto`.
    """

    def __init__(
        self,
        quic: Any,
        *,
        owner: MeshTransport,
        engine: QuicEngine,
        dialer: bool,
        sock: socket.socket | None = None,
        send_sock: socket.socket | None = None,
        on_cid: Callable[[Connection, bytes, bool], None] | None = None,
        remote_address: str = "?",
    ) -> None:
        self._quic = quic
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._send_sock = sock or send_sock  # a dialer's own (connected) socket, or the listener's
        self._on_cid = on_cid  # a listener's routing table: (conn, connection id, issued?)
        self._transmit_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = asyncio.Event()
        self.owner = owner
        self.dialer = dialer
        self._sock = sock  # a dialer's own socket, read in bursts; listeners share the listener's
        self._data_queued = False  # stream data waits for the next transmit
        self.state = State.HANDSHAKING
        self.peer_id: str | None = None
        self.peer_window = 0
        self.link: PeerLink | None = None
        self.remote_address = remote_address
        self.udp: asyncio.DatagramTransport | None = None  # dialers own their socket
        self.close_code: int | None = None
        self.close_reason = ""
        self._config = owner.config
        self._control_id = 0  # the dialer's first bidirectional stream
        self._decoder = FrameDecoder(owner.config.max_frame)
        self._inbox: deque[dict[str, Any]] = deque()
        self._inbox_event = asyncio.Event()
        self._early: list[Any] = []
        self._early_bytes = 0
        self._streams: dict[int, Stream] = {}
        self._inbound: list[tuple[bytes, Any]] = []  # the burst being read
        self._fed: dict[int, Stream] = {}  # streams fed during this burst, delivered after it
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
        elif self.state is State.READY and not self._probes:
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
        if self.state is State.CLOSED:
            return
        self.close_code = code
        self.close_reason = reason
        # Sync close: quic.close() queues CONNECTION_CLOSE and transmit() sends it right away.
        self._quic.close(error_code=code, reason_phrase=tell_peer or code_name(CloseCode, code))
        self.transmit()
        self._enter_closed(reason)

    def abort(self, reason: str) -> None:
        """Close and drop the socket at once (a dial attempt that lost or timed out)."""
        self.close_with(CloseCode.GOODBYE, reason)
        if self.udp is not None:
            self.udp.close()

    # --- authentication inbox ---------------------------------------------------------------

    async def next_auth_message(self, deadline: float) -> dict[str, Any]:
        """The next control message before READY; TimeoutError or ConnectionGone otherwise."""
        while not self._inbox:
            if self.state is State.CLOSED:
                raise ConnectionGone(self.close_code, self.close_reason)
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError
            self._inbox_event.clear()
            await asyncio.wait_for(self._inbox_event.wait(), remaining)
        return self._inbox.popleft()

    def peer_certificate(self) -> bytes | None:
        """The peer's TLS certificate (DER), once QUIC's handshake is done."""
        return self._engine.peer_certificate(self._quic)

    def become_ready(self, link: PeerLink) -> None:
        """Authentication succeeded: deliver what arrived meanwhile, start the keepalive."""
        self.link = link
        self.state = State.READY
        self._keepalive = self._loop.create_task(self._keep_alive(), name=f"keepalive {link.short_id}")
        self._send_ping()  # a first RTT sample within one round trip, not one keepalive later
        pending, self._inbox = self._inbox, deque()
        for msg in pending:
            self._on_control_message(msg)
        early, self._early = self._early, []
        for event in early:
            self.quic_event_received(event)
        self._deliver_fed()
        self.transmit()

    # --- sending ----------------------------------------------------------------------------

    def send_control(self, msg: Mapping[str, Any]) -> None:
        if self.state is State.CLOSED:
            raise TransportError(f"connection to {self._who()} is closed")
        self.send_stream_data(self._control_id, encode_frame(msg, max_frame=self._config.max_frame))

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.state is State.CLOSED:
            raise TransportError(f"connection to {self._who()} is closed")
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except self._engine.stream_errors as exc:  # stream reset, finished or unknown
            raise TransportError(f"stream {stream_id} to {self._who()} cannot send: {exc}") from exc
        self._data_queued = True
        self._transmit_soon()

    # --- the adapter: datagrams in and out, the timer ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    @property
    def host_cid(self) -> bytes:
        """The connection id this end chose first (public on both engines)."""
        return bytes(self._quic.host_cid)

    def connect(self, addr: Any) -> None:
        """Start a dialer's QUIC handshake with `addr`."""
        self._quic.connect(addr, now=self._loop.time())
        self.transmit()

    def transmit(self) -> None:
        """Send what QUIC has queued and re-arm its timer; a pending ACK rides along with stream data."""
        self._transmit_handle = None
        now = self._loop.time()
        if self._data_queued:
            self._data_queued = False
            self._engine.acknowledge_now(self._quic, now)
        try:
            datagrams = self._quic.datagrams_to_send(now=now)
        except self._engine.stream_errors as exc:  # qh3 raises when its core gives up
            log.debug("QUIC engine failed a transmit towards %s: %s", self._who(), exc)
            datagrams = []
        if datagrams:
            send_datagrams(self._send_sock, self._transport, datagrams, connected=self.dialer)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _transmit_soon(self) -> None:
        if self._transmit_handle is not None and self._transmit_handle.when() <= self._loop.time():  # type: ignore[attr-defined]
            return
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
        self._transmit_handle = self._loop.call_at(self._loop.time(), self.transmit)

    def _acknowledge_soon(self) -> None:
        """Answer a burst that brought no data to send within ACK_DELAY: the ACK rides on the reply.

        A tunneled request is usually answered within a fraction of a millisecond; sending its
        ACK alone first costs both nodes a datagram and a wake-up (RFC 9000 allows delaying
        ACKs up to max_ack_delay, 25 ms).
        """
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_at(self._loop.time() + ACK_DELAY, self.transmit)

    def _on_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = None
        self._timer_at = None
        self._quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _process_events(self, arrival: float | None = None) -> None:
        """Handle what QUIC produced; `arrival` is when the datagrams behind it were read.

        Events that come out of a timer (a retransmission, data QUIC held back) are stamped
        with the present instead: a ping answered from them then reports no waiting, so the
        RTT it yields can be too long, never too short.
        """
        self._arrival = self._loop.time() if arrival is None else arrival
        while (event := self._quic.next_event()) is not None:
            name = type(event).__name__
            if name == "ConnectionIdIssued" and self._on_cid is not None:
                self._on_cid(self, event.connection_id, True)
            elif name == "ConnectionIdRetired" and self._on_cid is not None:
                self._on_cid(self, event.connection_id, False)
            self.quic_event_received(event)
        self._deliver_fed()

    def _deliver_fed(self) -> None:
        fed, self._fed = self._fed, {}
        for stream in fed.values():
            stream.reader._deliver()

    async def wait_closed(self) -> None:
        """Wait until QUIC reports the connection terminated (after its closing period)."""
        await self._closed.wait()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not State.CLOSED:
            self._enter_closed("socket closed")
        self._closed.set()

    def send_credit(self, stream_id: int, limit: int) -> None:
        with contextlib.suppress(TransportError):
            self.send_control({TYPE_FIELD: "_credit", "s": stream_id, "o": limit})

    def reset_stream(self, stream_id: int, code: int) -> None:
        if self.state is not State.CLOSED:
            with contextlib.suppress(RuntimeError, ValueError):
                self._quic.reset_stream(stream_id, code)
            self._transmit_soon()

    def stop_stream(self, stream_id: int, code: int) -> None:
        if self.state is not State.CLOSED:
            with contextlib.suppress(RuntimeError, ValueError):
                self._quic.stop_stream(stream_id, code)
            self._transmit_soon()

    def open_stream(self, kind: str, header: Mapping[str, Any]) -> Stream:
        if not isinstance(kind, str) or not kind or kind.startswith("_"):
            raise ConfigError(f"stream kind {kind!r} is empty or reserved")
        if self.state is not State.READY:
            raise TransportError(f"connection to {self._who()} is not open")
        frame = encode_frame(
            {TYPE_FIELD: "_open", "kind": kind, "header": dict(header)}, max_frame=self._config.max_frame
        )
        stream_id = self._quic.get_next_available_stream_id()
        stream = Stream(self, stream_id, kind, self._config.stream_window, self.peer_window)
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
        while len(self._pings) >= MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        with contextlib.suppress(TransportError):
            self.send_control({TYPE_FIELD: "_ping", "n": self._ping_seq})
            self.transmit()  # out now, and stamped as it leaves: queueing is not network time
        self._pings[self._ping_seq] = self._loop.time()
        return self._ping_seq

    async def probe(self, timeout: float) -> bool:
        """True if the peer answers a ping within `timeout`."""
        if self.state is not State.READY:
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
        while self.state is State.READY:
            await asyncio.sleep(self._config.keepalive_interval)
            if self.state is State.READY:
                self._send_ping()

    # --- QUIC events ------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A dialer's socket: feed the datagram and the rest of its burst to QUIC."""
        self.datagram_in(data, addr)
        if self._sock is not None:
            drain_socket(self._sock, self._transport, self.datagram_in, self.error_received)
        self.datagrams_done()

    def datagram_in(self, data: bytes, addr: Any) -> None:
        """Take one datagram of a burst; `datagrams_done()` feeds the burst to QUIC."""
        self._arrival = self._loop.time()
        self._inbound.append((data, addr))

    def datagrams_done(self) -> None:
        """A burst was fed: handle its events, and answer it on the next loop turn.

        Transmitting after every datagram (as aioquic's own protocol does) costs a transmit per
        datagram. Deferring sends one answer for a whole burst, and lets a stream reader woken
        by this data go first: a tunnel forwards it before the ACK is built.
        """
        inbound, self._inbound = self._inbound, []
        self._engine.receive(self._quic, inbound, self._arrival)
        self._process_events(self._arrival)
        if len(inbound) > SMALL_BURST:
            self._transmit_soon()  # a bulk transfer: its sender waits on our ACKs to send more
        else:
            self._acknowledge_soon()

    def quic_event_received(self, event: Any) -> None:
        try:
            name = type(event).__name__  # the same event classes in both engines
            if name == "StreamDataReceived":
                self._on_stream_data(event)
            elif name == "StreamReset":
                self._on_stream_reset(event)
            elif name == "StopSendingReceived":
                self._on_stop_sending(event)
            elif name == "HandshakeCompleted":
                self._on_handshake_completed()
            elif name == "ConnectionTerminated":
                self._on_terminated(event)
        except Exception:
            # Never let a bug here escape into the engine's datagram loop.
            log.exception("internal error handling %s from %s", type(event).__name__, self._who())
            self.close_with(CloseCode.PROTOCOL_ERROR, "internal error")

    def _on_handshake_completed(self) -> None:
        self.state = State.AUTHENTICATING
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(None)
        if not self.dialer:
            self.owner._accept_handshake(self)

    def _on_terminated(self, event: Any) -> None:
        if self.state is not State.CLOSED:
            # Closed by the peer or by the engine (idle timeout, protocol violation).
            self.close_code = event.error_code
            if event.frame_type is None:
                self.close_reason = f"peer closed the connection ({code_name(CloseCode, event.error_code)})"
                if event.reason_phrase and event.reason_phrase != code_name(CloseCode, event.error_code):
                    self.close_reason += f": {event.reason_phrase}"
            elif str(event.reason_phrase).lower() == "idle timeout":
                self.close_reason = f"no answer for {self._config.idle_timeout:g} s (idle timeout)"
            else:
                self.close_reason = f"QUIC error {event.error_code:#x}: {event.reason_phrase or 'no reason'}"
        self._enter_closed(self.close_reason)
        self._closed.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._on_cid is not None:
            self._on_cid(self, b"", False)  # forget every id of this connection
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(PeerUnreachable(f"{self.remote_address}: {self.close_reason}"))
        if self.udp is not None:
            self.udp.close()

    def _enter_closed(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
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
                waiter.set_exception(fresh(exc))
        if self._keepalive is not None:
            self._keepalive.cancel()
        self.owner._connection_closed(self, reason)

    def _is_remote(self, stream_id: int) -> bool:
        return bool(stream_id & 1) == self.dialer  # client-initiated ids are even

    def _on_stream_data(self, event: Any) -> None:
        stream_id = event.stream_id
        if stream_id == self._control_id:
            self._on_control_data(event.data, event.end_stream)
            return
        if stream_id & 2:  # unidirectional: not part of this protocol
            self.stop_stream(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        if self.state is not State.READY:
            self._hold_early(event, len(event.data))
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            if event.data:
                stream.reader._feed(event.data, deliver=False)
                self._fed[stream_id] = stream
            if event.end_stream:
                stream.reader._feed_eof()
        elif stream_id in self._opening or (
            self._is_remote(stream_id) and stream_id > self._highest_remote_stream
        ):
            self._on_opening_data(stream_id, event.data, event.end_stream)
        # else: late data for a stream we already finished with or reset; drop it.

    def _hold_early(self, event: Any, size: int) -> None:
        stream_id = getattr(event, "stream_id", -1)
        # Only a dialer waiting for the listener's proof may see listener streams early (they
        # can overtake the proof on the wire). Anyone else opening streams before
        # authentication gets them reset, and learns nothing from them.
        if self.dialer and self.state is State.AUTHENTICATING and self._is_remote(stream_id):
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
        stream = Stream(self, stream_id, kind, self._config.stream_window, self.peer_window)
        self._streams[stream_id] = stream
        if rest:
            stream.reader._feed(rest)
        if end_stream:
            stream.reader._feed_eof()
        self.owner._run_stream_handler(self, stream, handler, header)

    def _refuse(self, stream_id: int, code: StreamCode) -> None:
        self.reset_stream(stream_id, code)
        self.stop_stream(stream_id, code)

    def _on_stream_reset(self, event: Any) -> None:
        if self.state is not State.READY and self.state is not State.CLOSED:
            self._hold_early(event, 0)
            return
        self._opening.pop(event.stream_id, None)
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            reason = code_name(StreamCode, event.error_code)
            stream.reader._fail(
                TransportError(f"{self._who()} reset its side of stream {stream.kind!r} ({reason})")
            )

    def _on_stop_sending(self, event: Any) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            reason = code_name(StreamCode, event.error_code)
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
            if self.state is State.READY:
                self._on_control_message(msg)
            elif self.state is not State.CLOSED:
                if len(self._inbox) >= MAX_PENDING_MESSAGES:
                    self.close_with(
                        CloseCode.PROTOCOL_ERROR, "peer sent too many messages before authenticating"
                    )
                    return
                self._inbox.append(msg)
                self._inbox_event.set()
        if end_stream and self.state is not State.CLOSED:
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
                wake(self._probes.get(seq))
        elif kind.startswith("_"):
            log.debug("ignoring unknown transport message %r from %s", kind, self._who())
        else:
            self.owner._deliver_message(self, msg)

    def _who(self) -> str:
        return self.peer_id[:8] if self.peer_id else self.remote_address


# --- public link ------------------------------------------------------------------------------


class PeerLink:
    """An authenticated connection to one peer: control messages, typed streams, RTT."""

    def __init__(self, conn: Connection) -> None:
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
        return self._conn.state is State.READY

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
        return f"PeerLink({self.short_id} at {self.remote_address}, {state}, rtt={ms_text(self.rtt_ms)})"


# --- the endpoint -----------------------------------------------------------------------------
