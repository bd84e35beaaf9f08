"""PeerLink: the public face of an authenticated connection to one peer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mesh_llm.errors import MalformedFrame
from mesh_llm.peer.rtt import RttEstimator
from mesh_llm.peer.wire import TYPE_FIELD
from mesh_llm.transport._codes import CloseCode
from mesh_llm.transport._state import State
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter, Stream


class LinkedConnection(Protocol):
    """What a link needs of its connection."""

    peer_id: str | None
    remote_address: str
    dialer: bool
    close_reason: str
    path: str
    relay: str | None

    @property
    def state(self) -> State: ...
    @property
    def rtt(self) -> RttEstimator: ...
    def now(self) -> float: ...

    silent_s: Callable[[], float]

    def send_control(self, msg: Mapping[str, Any]) -> None: ...
    def open_stream(self, kind: str, header: Mapping[str, Any], *, internal: bool = False) -> Stream: ...
    async def probe(self, timeout: float) -> bool: ...
    def retire(self, grace: float | None) -> None: ...
    def close_with(self, code: CloseCode, reason: str, *, tell_peer: str = "") -> None: ...


def ms_text(ms: float | None) -> str:
    return "unmeasured" if ms is None else f"{ms:.2f} ms"


class PeerLink:
    """An authenticated connection to one peer: control messages, typed streams, RTT."""

    def __init__(self, conn: LinkedConnection) -> None:
        assert conn.peer_id is not None
        self._conn = conn
        self.node_id: str = conn.peer_id
        self.remote_address: str = conn.remote_address
        self.initiated_locally: bool = conn.dialer
        self.path: str = conn.path  # "direct", "punched" (through NATs) or "relayed"
        self.relay: str | None = conn.relay  # the relay's node id when relayed

    @property
    def relayed(self) -> bool:
        """Whether the link's packets travel through another member (see _relay.py)."""
        return self.path == "relayed"

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
    def silent_s(self) -> float:
        """How long the peer has left a ping unanswered, in seconds (0 while it answers them)."""
        return self._conn.silent_s()

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

    def open_internal_stream(
        self, kind: str, header: Mapping[str, Any]
    ) -> tuple[MeshStreamReader, MeshStreamWriter]:
        """A stream of one of the transport's own kinds (starting with "_"), for the transport."""
        stream = self._conn.open_stream(kind, header, internal=True)
        return stream.reader, stream.writer

    async def ping(self, timeout: float = 1.0) -> bool:
        """True if the peer answers a ping within `timeout` seconds (also updates rtt_ms)."""
        return await self._conn.probe(timeout)

    def close(self, reason: str = "closed") -> None:
        """Close the connection now (goodbye); unsent stream data is dropped."""
        self._conn.close_with(CloseCode.GOODBYE, f"closed locally: {reason}", tell_peer=reason)

    def replaced(self, by: PeerLink, grace: float | None) -> None:
        """A newer connection to the same peer took this link's place: close it. A relayed link
        replaced by one that is not keeps its open streams until they finish (within `grace`)."""
        if self.relayed and not by.relayed:
            self._conn.retire(grace)
            return
        self._conn.close_with(CloseCode.DUPLICATE, "replaced by a newer connection", tell_peer="replaced")

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return (
            f"PeerLink({self.short_id} at {self.remote_address}, {self.path}, {state}, "
            f"rtt={ms_text(self.rtt_ms)})"
        )
