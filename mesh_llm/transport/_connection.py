"""One QUIC connection as the mesh sees it, over the asyncio adapter of _adapter.py.

On top of the adapter: the authentication inbox, the control stream, typed data streams (see
_demux.py) and their credit, and a keepalive that samples the RTT. It becomes a `PeerLink` only
after mutual authentication on its control stream (the dialer's first bidirectional stream, id
0); before that, nothing else is accepted from the peer. Its state (see _state.py) changes only
through `_set_state`, which logs every transition. QUIC's idle timeout closes a connection whose
peer stopped answering (see _liveness.py); `send_control` one whose peer stopped taking messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Mapping
from functools import partial
from typing import Any, Protocol

from mesh_llm.errors import ConfigError, PeerUnreachable, TransportError, WireError
from mesh_llm.peer.rtt import RttEstimator
from mesh_llm.peer.wire import TYPE_FIELD, FrameDecoder, encode_frame
from mesh_llm.transport._adapter import CidCallback, QuicAdapter
from mesh_llm.transport._before_ready import BeforeReady
from mesh_llm.transport._codes import CloseCode, StreamCode, code_name, termination_reason
from mesh_llm.transport._compat import QuicEngine
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._demux import StreamTable
from mesh_llm.transport._link import PeerLink
from mesh_llm.transport._liveness import Liveness
from mesh_llm.transport._retire import Retirement
from mesh_llm.transport._state import ConnectionGone, State, check_transition
from mesh_llm.transport._streams import Stream

log = logging.getLogger("mesh_llm.transport")


class ConnectionOwner(Protocol):
    """What a connection needs of its endpoint (MeshTransport)."""

    @property
    def config(self) -> TransportConfig: ...
    def connection_opened(self, conn: Connection) -> None: ...
    def connection_closed(self, conn: Connection, reason: str) -> None: ...
    def accept_handshake(self, conn: Connection) -> None: ...
    def stream_handler(self, kind: str) -> Any | None: ...
    def run_stream_handler(
        self, conn: Connection, stream: Stream, handler: Any, header: dict[str, Any]
    ) -> None: ...
    def deliver_message(self, conn: Connection, msg: dict[str, Any]) -> None: ...
    def spawn(self, awaitable: Awaitable[Any], name: str | None = None) -> None: ...


class Connection(QuicAdapter):
    """One QUIC connection: authentication inbox, control stream, data streams, keepalive."""

    def __init__(
        self,
        quic: Any,
        *,
        owner: ConnectionOwner,
        engine: QuicEngine,
        dialer: bool,
        sock: socket.socket | None = None,
        send_sock: socket.socket | None = None,
        on_cid: CidCallback | None = None,
        remote_address: str = "?",
    ) -> None:
        super().__init__(quic, engine=engine, dialer=dialer, sock=sock, send_sock=send_sock, on_cid=on_cid)
        self._closed = asyncio.Event()
        self.owner = owner
        self._state = State.HANDSHAKING
        self.peer_id: str | None = None
        self.peer_window = 0
        self.link: PeerLink | None = None
        self.remote_address = remote_address
        self.path = "direct"  # how its packets travel: "direct", "punched" or "relayed"
        self.relay: str | None = None  # the relay's node id, on a relayed path
        self._retiring: Retirement | None = None  # replaced: closes when its streams end
        self.udp: asyncio.DatagramTransport | None = None  # dialers own their socket
        self.close_code: int | None = None
        self.close_reason = ""
        self._config = owner.config
        self._control_id = 0  # the dialer's first bidirectional stream
        self._decoder = FrameDecoder(owner.config.max_frame)
        self._before_ready = BeforeReady(self._loop, self._config.stream_window)
        self._streams = StreamTable(self, self._config)
        self._liveness = Liveness(self.send_control, self.transmit, interval=self._config.keepalive_interval)
        self.silent_s = self._liveness.silent_for  # seconds the peer has left a ping unanswered
        self._handshake: asyncio.Future[None] | None = None
        if dialer:
            self._handshake = self._loop.create_future()
            # Mark failures as retrieved: a losing dial attempt may never await its handshake.
            self._handshake.add_done_callback(lambda f: f.cancelled() or f.exception())
        owner.connection_opened(self)

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the connection is in its life; changed only by `_set_state`."""
        return self._state

    def _set_state(self, new: State, why: str) -> None:
        """Move to `new` (ImpossibleTransition if there is no such edge), logging old -> new."""
        old = self._state
        self._state = check_transition(old, new)
        log.debug("connection %s: %s -> %s (%s)", self._who(), old.value, new.value, why)

    # --- lifecycle --------------------------------------------------------------------------

    def error_received(self, exc: Exception) -> None:
        # Only dialers' connected sockets see ICMP errors. During the handshake, "port unreachable"
        # fails the dial at once; on a live link it hints that the peer died: confirm with a ping
        # rather than trust one (spoofable) ICMP packet.
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(PeerUnreachable(f"{self.remote_address}: {exc}"))
        elif self.state is State.READY and not self._liveness.probing:
            self.owner.spawn(self._confirm_alive(), name=f"probe {self._who()}")

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
        return await self._before_ready.next_message(deadline, self._check_open)

    def _check_open(self) -> None:
        if self.state is State.CLOSED:
            raise ConnectionGone(self.close_code, self.close_reason)

    def peer_certificate(self) -> bytes | None:
        """The peer's TLS certificate (DER), once QUIC's handshake is done."""
        return self._engine.peer_certificate(self._quic)

    def become_ready(self, link: PeerLink) -> None:
        """Authentication succeeded: deliver what arrived meanwhile, start the keepalive."""
        self.link = link
        self._set_state(State.READY, "authenticated")
        self._liveness.start(name=f"keepalive {link.short_id}")
        pending, early = self._before_ready.release()
        for msg in pending:
            self._on_control_message(msg)
        for event in early:
            self.quic_event_received(event)
        self._streams.deliver_fed()
        self.transmit()

    # --- sending ----------------------------------------------------------------------------

    def send_control(self, msg: Mapping[str, Any]) -> None:
        """Queue one control message; a peer that leaves too many untaken loses the link."""
        self.send_stream_data(self._control_id, encode_frame(msg, max_frame=self._config.max_frame))
        backlog = self._engine.send_backlog(self._quic, self._control_id)
        if backlog > self._config.max_control_backlog:
            self.close_with(CloseCode.STALLED, f"peer left {backlog} bytes of control messages untaken")

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.state is State.CLOSED:
            raise TransportError(f"connection to {self._who()} is closed")
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except self._engine.stream_errors as exc:  # stream reset, finished or unknown
            raise TransportError(f"stream {stream_id} to {self._who()} cannot send: {exc}") from exc
        self._data_queued = True
        self._transmit_soon()

    async def wait_closed(self) -> None:
        """Wait until QUIC reports the connection terminated (after its closing period)."""
        await self._closed.wait()

    def deliver_fed(self) -> None:
        self._streams.deliver_fed()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not State.CLOSED:
            self._enter_closed("socket closed")
        self._closed.set()

    def send_credit(self, stream_id: int, limit: int) -> None:
        with contextlib.suppress(TransportError):
            self.send_control({TYPE_FIELD: "_credit", "s": stream_id, "o": limit})

    def reset_stream(self, stream_id: int, code: int) -> None:
        self._end_stream(self._quic.reset_stream, stream_id, code)

    def stop_stream(self, stream_id: int, code: int) -> None:
        self._end_stream(self._quic.stop_stream, stream_id, code)

    def _end_stream(self, how: Any, stream_id: int, code: int) -> None:
        if self.state is not State.CLOSED:
            with contextlib.suppress(RuntimeError, ValueError):
                how(stream_id, code)
            self._transmit_soon()

    def open_stream(self, kind: str, header: Mapping[str, Any], *, internal: bool = False) -> Stream:
        """A new stream of `kind`; kinds starting with "_" are the transport's own (`internal`)."""
        if not isinstance(kind, str) or not kind or kind.startswith("_") != internal:
            raise ConfigError(f"stream kind {kind!r} is empty or reserved")
        if self.state is not State.READY:
            raise TransportError(f"connection to {self._who()} is not open")
        return self._streams.open(kind, header)

    def forget_stream(self, stream_id: int) -> None:
        self._streams.forget(stream_id)
        if self._retiring is not None:
            self._retiring.streams_left(len(self._streams))

    def who(self) -> str:  # StreamTableHost: what the stream table asks of its connection
        return self._who()

    def next_stream_id(self) -> int:
        return int(self._quic.get_next_available_stream_id())

    def stream_handler(self, kind: str) -> Any | None:
        return self.owner.stream_handler(kind)

    def run_stream_handler(self, stream: Stream, handler: Any, header: dict[str, Any]) -> None:
        self.owner.run_stream_handler(self, stream, handler, header)

    # --- RTT and liveness -------------------------------------------------------------------

    @property
    def rtt(self) -> RttEstimator:
        return self._liveness.rtt

    def now(self) -> float:
        """This connection's clock (the event loop's), which RTT samples are timed on."""
        return self._loop.time()

    def retire(self, grace: float | None) -> None:
        """A better path replaced this link: let its open streams finish, then close (see _retire.py)."""
        if self._retiring is None:
            self._retiring = Retirement(
                self._loop, partial(self.close_with, CloseCode.DUPLICATE, "replaced"), grace
            )
            self._retiring.streams_left(len(self._streams))

    async def probe(self, timeout: float) -> bool:
        """True if the peer answers a ping within `timeout`."""
        if self.state is not State.READY:
            return False
        return await self._liveness.probe(timeout)

    # --- QUIC events ------------------------------------------------------------------------

    def quic_event_received(self, event: Any) -> None:
        try:
            name = type(event).__name__  # the same event classes in both engines
            if name == "StreamDataReceived":
                self._on_stream_data(event)
            elif name == "StreamReset":
                self._on_stream_reset(event)
            elif name == "StopSendingReceived":
                self._streams.on_stop_sending(event.stream_id, event.error_code)
            elif name == "HandshakeCompleted":
                self._on_handshake_completed()
            elif name == "ConnectionTerminated":
                self._on_terminated(event)
        except Exception:
            # Never let a bug here escape into the engine's datagram loop.
            log.exception("internal error handling %s from %s", type(event).__name__, self._who())
            self.close_with(CloseCode.PROTOCOL_ERROR, "internal error")

    def _on_handshake_completed(self) -> None:
        if self.state is not State.HANDSHAKING:
            return  # closed meanwhile: nothing to authenticate
        self._set_state(State.AUTHENTICATING, "QUIC handshake done")
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(None)
        if not self.dialer:
            self.owner.accept_handshake(self)

    def _on_terminated(self, event: Any) -> None:
        if self.state is not State.CLOSED:
            # Closed by the peer or by the engine (idle timeout, protocol violation).
            self.close_code = event.error_code
            self.close_reason = termination_reason(
                event.error_code, event.frame_type, event.reason_phrase, self._config.idle_timeout
            )
        self._enter_closed(self.close_reason)
        self._closed.set()
        self._stop_timer()
        if self._on_cid is not None:
            self._on_cid(self, b"", False)  # forget every id of this connection
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(PeerUnreachable(f"{self.remote_address}: {self.close_reason}"))
        if self.udp is not None:
            self.udp.close()

    def _enter_closed(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self._set_state(State.CLOSED, reason)
        exc = TransportError(f"connection to {self._who()} lost: {reason}")
        self._streams.fail_all(exc)
        self._before_ready.close()
        self._liveness.stop(exc)
        self.owner.connection_closed(self, reason)

    def _on_stream_data(self, event: Any) -> None:
        stream_id = event.stream_id
        if stream_id == self._control_id:
            self._on_control_data(event.data, event.end_stream)
        elif stream_id & 2:  # unidirectional: not part of this protocol
            self.stop_stream(stream_id, StreamCode.PROTOCOL_ERROR)
        elif self.state is not State.READY:
            self._hold_early(event, len(event.data))
        else:
            self._streams.on_data(stream_id, event.data, event.end_stream)

    def _hold_early(self, event: Any, size: int) -> None:
        stream_id = getattr(event, "stream_id", -1)
        # Only a dialer waiting for the listener's proof may see listener streams early (they
        # can overtake the proof on the wire). Anyone else opening streams before
        # authentication gets them reset, and learns nothing from them.
        if self.dialer and self.state is State.AUTHENTICATING and self._streams.is_remote(stream_id):
            if not self._before_ready.hold_event(event, size):
                self.close_with(CloseCode.PROTOCOL_ERROR, "peer sent too much before authenticating")
            return
        self._streams.refuse(stream_id, StreamCode.NOT_AUTHENTICATED)

    def _on_stream_reset(self, event: Any) -> None:
        if self.state is not State.READY and self.state is not State.CLOSED:
            self._hold_early(event, 0)
        else:
            self._streams.on_reset(event.stream_id, event.error_code)

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
                if not self._before_ready.add_message(msg):
                    self.close_with(
                        CloseCode.PROTOCOL_ERROR, "peer sent too many messages before authenticating"
                    )
                    return
        if end_stream and self.state is not State.CLOSED:
            self.close_with(CloseCode.PROTOCOL_ERROR, "peer ended its control stream")

    def _on_control_message(self, msg: dict[str, Any]) -> None:
        kind = msg[TYPE_FIELD]
        if kind == "_credit":
            stream_id, limit = msg.get("s"), msg.get("o")
            if isinstance(stream_id, int) and isinstance(limit, int):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream.writer.grant_credit(limit)
        elif kind == "_ping":
            with contextlib.suppress(TransportError):
                # Say how long the ping waited here, so the sender can take it out of the RTT.
                held = max(0.0, self._loop.time() - self._arrival)
                self.send_control({TYPE_FIELD: "_pong", "n": msg.get("n"), "h": round(held, 6)})
                self.transmit()
        elif kind == "_pong":
            self._liveness.on_pong(msg, self._arrival)
        elif kind.startswith("_"):
            log.debug("ignoring unknown transport message %r from %s", kind, self._who())
        else:
            self.owner.deliver_message(self, msg)

    def _who(self) -> str:
        return self.peer_id[:8] if self.peer_id else self.remote_address
