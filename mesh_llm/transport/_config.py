"""The transport's settings: built once at the edge, read-only afterwards."""

from __future__ import annotations

from dataclasses import dataclass

from mesh_llm.errors import ConfigError
from mesh_llm.peer.wire import DEFAULT_MAX_FRAME
from mesh_llm.transport._compat import DEFAULT_ENGINE, ENGINES
from mesh_llm.transport._handshake import MAX_WINDOW, MIN_WINDOW

MAX_DATAGRAM_SIZE = 16383


@dataclass(frozen=True)
class TransportConfig:
    """Timeouts and sizes of the QUIC layer; built once at the edge, read-only afterwards."""

    handshake_timeout: float = 5.0  # QUIC + TLS handshake, per address
    auth_timeout: float = 5.0  # mesh authentication after the handshake (listener side)
    dial_timeout: float = 10.0  # default deadline of a whole dial()
    idle_timeout: float = 5.0  # a peer silent this long is gone
    keepalive_interval: float = 1.0  # ping period: keeps links busy, samples RTT
    max_frame: int = DEFAULT_MAX_FRAME  # largest control message or stream-open frame
    quic_engine: str = DEFAULT_ENGINE  # "qh3" or "aioquic" (see _compat.py)
    # UDP payload towards peers on routed paths of unknown MTU: an Ethernet MTU less IPv6 and
    # UDP headers. Peers on a directly attached network get their route's MTU (see _udp.py).
    max_datagram_size: int = 1452
    # UDP payload towards peers on this host (loopback or one of our own addresses), whose
    # datagrams never leave the kernel: fits a 16 KiB loopback MTU (macOS; Linux has 64 KiB)
    # less IPv6 and UDP headers. Each datagram costs the engine a fixed amount of work to build
    # and parse, so a 9.6 KB RPC request in 1 datagram instead of 7 cuts the latency.
    same_host_datagram_size: int = 16336
    stream_window: int = 1 << 20  # per-stream bytes a peer may send beyond what we have read
    # What a peer may make a connection hold before its streams do anything: streams whose open
    # frame is still incomplete (how many, their bytes together, and how long each may take),
    # and streams it opened that are still open.
    max_opening_streams: int = 16
    max_opening_bytes: int = 2 << 20
    stream_open_timeout: float = 5.0
    max_remote_streams: int = 1024
    # Bytes all of a connection's streams together may hold unread; beyond, the fullest is reset.
    max_connection_unread: int = 64 << 20
    # Control messages a peer may leave untaken (flow control withheld, or frozen) before the
    # link is closed: gossip would otherwise queue without bound. Several whole peer tables
    # (512 records of at most 16 KiB: 8 MiB) fit, for a slow link that is sent two at once.
    max_control_backlog: int = 64 << 20
    liveness_probe_timeout: float = 1.0  # ping answer wait before treating an old link as dead
    suspect_silence: float = 3.0  # a peer leaving pings unanswered this long is suspect for routing
    close_timeout: float = 2.0  # how long close() waits for CONNECTION_CLOSE to go out
    rtt_smoothing: float = 0.125  # EWMA weight of a new RTT sample (RFC 6298's alpha)
    # A relayed link replaced by a direct one keeps its open streams this long at most (None:
    # until they end; a split's RPC streams last as long as the split).
    retire_grace: float | None = None
    relay_bytes_per_s: int = 0  # everything this node relays for others together; 0: no cap

    def __post_init__(self) -> None:
        for name in (
            "handshake_timeout",
            "auth_timeout",
            "dial_timeout",
            "idle_timeout",
            "keepalive_interval",
            "liveness_probe_timeout",
            "suspect_silence",
            "close_timeout",
            "stream_open_timeout",
            "max_opening_streams",
            "max_remote_streams",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"transport {name} must be positive")
        if self.liveness_probe_timeout >= self.auth_timeout:
            # A listener may probe an old link while a dialer waits for its verdict.
            raise ConfigError("the liveness probe timeout must be shorter than the auth timeout")
        if self.keepalive_interval >= self.idle_timeout:
            raise ConfigError("the keepalive interval must be shorter than the idle timeout")
        for name in ("max_datagram_size", "same_host_datagram_size"):
            if not 1200 <= getattr(self, name) <= MAX_DATAGRAM_SIZE:
                raise ConfigError(f"{name} must be between 1200 and {MAX_DATAGRAM_SIZE} bytes")
        if not MIN_WINDOW <= self.stream_window <= MAX_WINDOW:
            raise ConfigError(f"stream_window must be between {MIN_WINDOW} and {MAX_WINDOW} bytes")
        if self.max_frame < 1024:
            raise ConfigError("max_frame must be at least 1024 bytes")
        if self.max_connection_unread < self.stream_window:
            raise ConfigError("max_connection_unread must hold at least one stream_window")
        if self.max_control_backlog < 4 * self.max_frame:
            raise ConfigError("max_control_backlog must hold at least four max_frame")
        if self.max_opening_bytes < self.max_frame:
            raise ConfigError("max_opening_bytes must hold at least one max_frame")
        if self.quic_engine not in ENGINES:
            raise ConfigError(f"unknown QUIC engine {self.quic_engine!r}; choose one of {', '.join(ENGINES)}")
        if not 0 < self.rtt_smoothing <= 1:
            raise ConfigError("rtt_smoothing must be in (0, 1]")
