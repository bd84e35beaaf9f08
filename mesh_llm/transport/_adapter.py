"""The asyncio adapter under a connection: datagrams in, datagrams out, QUIC's timer.

Like aioquic's own asyncio protocol, it only feeds bytes to the engine's connection and sends
what the engine queued; `Connection` (in _connection.py) adds everything the mesh needs.

Packets: a burst of datagrams is read in one go and answered with one transmit, on the next
loop turn (so a stream reader woken by the data goes first), and a pending ACK rides along with
stream data instead of following it in a datagram of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from mesh_llm.transport._compat import QuicEngine
from mesh_llm.transport._udp import drain_socket, send_datagrams

log = logging.getLogger("mesh_llm.transport")

ACK_DELAY = 0.001
SMALL_BURST = 8  # datagrams; a tunneled RPC request of 9.6 KB is 7 at 1472 bytes

# A listener's routing table: (connection, connection id, issued?); b"" and False: forget all.
CidCallback = Callable[[Any, bytes, bool], None]


class QuicAdapter(asyncio.DatagramProtocol):
    """Feeds one engine connection its datagrams and timer, and sends what it queued.

    A dialer's adapter usually owns its (connected) socket: asyncio calls `connection_made` and
    `datagram_received` on it. An accepted connection, a dial that punches a NAT (which must leave
    from the listening socket, whose mapping the peer was told), and a relayed connection share
    another path: the listener (or the relay's stream) routes datagrams here and lends `sendto`. Subclasses handle the engine's events in `quic_event_received` and deliver
    stream data gathered during a burst in `deliver_fed`.
    """

    def __init__(
        self,
        quic: Any,
        *,
        engine: QuicEngine,
        dialer: bool,
        sock: socket.socket | None = None,
        send_sock: socket.socket | None = None,
        on_cid: CidCallback | None = None,
    ) -> None:
        self._quic = quic
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._send_sock = sock or send_sock  # a dialer's own (connected) socket, or the listener's
        self._on_cid = on_cid
        self._transmit_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.dialer = dialer
        self._sock = sock  # a dialer's own socket, read in bursts; listeners share the listener's
        self._data_queued = False  # stream data waits for the next transmit
        self._inbound: list[tuple[bytes, Any]] = []  # the burst being read
        self._arrival = 0.0  # when the datagram being processed arrived

    # --- hooks for the connection above -----------------------------------------------------

    def quic_event_received(self, event: Any) -> None:
        """Handle one event of the engine's connection."""

    def deliver_fed(self) -> None:
        """Deliver stream data gathered while a burst was processed."""

    def _who(self) -> str:
        return "?"

    # --- the adapter ------------------------------------------------------------------------

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
            send_datagrams(self._send_sock, self._transport, datagrams, connected=self._sock is not None)
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

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

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
        self.deliver_fed()

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
