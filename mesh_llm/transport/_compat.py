"""The QUIC engines the transport runs on, and every workaround for their private parts.

Two libraries with one API: qh3 (the default: a maintained fork of aioquic with a Rust packet
core, ~5x less CPU per round trip and ~14x the bulk throughput, measured in BENCHMARKS.md) and
aioquic (pure Python, the library the project was specified with). Nodes on different engines
interoperate: it is one protocol.

Everything here that reaches into a library's private attributes says so, reads defensively,
and has a test in tests/unit/test_quic_compat.py that fails if the library changes under it:
- aioquic has no public accessor for the peer's certificate (`tls._peer_certificate`);
- aioquic sends a pending ACK only after its delay and alone, unless told otherwise
  (`_spaces[...].ack_at`);
- aioquic's client offers key shares for four groups, a ClientHello that qh3 2.x's server
  cannot answer ("packet builder capacity exhausted"): our aioquic dialers offer X25519 only
  (`tls._supported_groups`), which every engine accepts.
- qh3 2.1's server still fails to build one flight for an aioquic client (the same error,
  raised from `datagrams_to_send`); the next poll succeeds, so the connection adapter logs the
  failed poll at debug level and carries on. In memory the handshake then takes 2 ms instead of 1.
- qh3 logs every connection its peer closes as a WARNING on its own logger ("Native peer close:
  ('peer_closed', True, 0, None, b'goodbye')"), normal joins and leaves included:
  `GoodbyeNotAlarming` drops that line for our normal close codes (goodbye, shutdown, a
  duplicate connection); the transport says those at INFO in its own words ("lost <peer>: peer
  closed the connection (shutdown)").
- aioquic has no public count of a stream's unsent bytes (`_streams[id].sender._buffer`); qh3 has
  one (`get_send_buffer_size`).
"""

from __future__ import annotations

import importlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh_llm.errors import ConfigError
from mesh_llm.transport._codes import CloseCode

ALPN = "mesh-llm/1"
ENGINES = ("qh3", "aioquic")
DEFAULT_ENGINE = "qh3"
QUIC_VERSION_1 = 0x00000001
_SERVER_NAME = "mesh-llm"  # certificates are self-signed; the node-id check replaces PKI


@dataclass(frozen=True)
class ServerCredentials:
    """The TLS certificate (DER, what the handshake binds to) and the key, in the engine's types."""

    certificate_der: bytes
    certificate: Any
    private_key: Any


class QuicEngine:
    """One QUIC library: builds connections and hides its private parts from the transport."""

    name: str

    def __init__(self) -> None:
        self.version = str(getattr(importlib.import_module(self.name), "__version__", "?"))
        connection = importlib.import_module(f"{self.name}.quic.connection")
        self._connection_class: Any = connection.QuicConnection
        self._configuration_class: Any = importlib.import_module(
            f"{self.name}.quic.configuration"
        ).QuicConfiguration
        # What send_stream_data/reset_stream raise for a stream that is reset, finished or unknown.
        self.stream_errors: tuple[type[Exception], ...] = (RuntimeError, ValueError)

    def __repr__(self) -> str:
        return f"{self.name} {self.version}"

    def _configuration(self, *, is_client: bool, datagram_size: int, idle_timeout: float) -> Any:
        return self._configuration_class(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=idle_timeout,
            max_datagram_size=datagram_size,
            verify_mode=ssl.CERT_NONE,
            server_name=_SERVER_NAME,
            supported_versions=[QUIC_VERSION_1],
        )

    def server_credentials(
        self, certificate: x509.Certificate, private_key: ed25519.Ed25519PrivateKey
    ) -> ServerCredentials:
        der = certificate.public_bytes(serialization.Encoding.DER)
        return ServerCredentials(der, certificate, private_key)

    def client_connection(self, *, datagram_size: int, idle_timeout: float) -> Any:
        """A dialer's QUIC connection (not yet connected)."""
        configuration = self._configuration(
            is_client=True, datagram_size=datagram_size, idle_timeout=idle_timeout
        )
        return self._connection_class(configuration=configuration)

    def server_connection(
        self, credentials: ServerCredentials, *, datagram_size: int, idle_timeout: float, original_dcid: bytes
    ) -> Any:
        """A listener's QUIC connection for a client whose first Initial had `original_dcid`."""
        configuration = self._configuration(
            is_client=False, datagram_size=datagram_size, idle_timeout=idle_timeout
        )
        configuration.certificate = credentials.certificate
        configuration.private_key = credentials.private_key
        return self._connection_class(
            configuration=configuration, original_destination_connection_id=original_dcid
        )

    def peer_certificate(self, quic: Any) -> bytes | None:
        """The DER certificate the peer proved its key with, once the handshake is done."""
        raise NotImplementedError

    def receive(self, quic: Any, datagrams: list[tuple[bytes, Any]], now: float) -> None:
        """Feed a burst of datagrams (in arrival order) to `quic`."""
        for data, addr in datagrams:
            quic.receive_datagram(data, addr, now=now)

    def acknowledge_now(self, quic: Any, now: float) -> None:
        """Let the packets about to carry stream data also carry the pending ACK, if any."""

    def send_backlog(self, quic: Any, stream_id: int) -> int:
        """Bytes of `stream_id` that the peer has not taken yet (not sent, or not acknowledged)."""
        return int(quic.get_send_buffer_size(stream_id))


NORMAL_CLOSES = frozenset({CloseCode.GOODBYE, CloseCode.SHUTDOWN, CloseCode.DUPLICATE})


class GoodbyeNotAlarming(logging.Filter):
    """Drops qh3's WARNING for a connection its peer closed normally (`NORMAL_CLOSES`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Native peer close: %r" or not isinstance(record.args, tuple) or not record.args:
            return True
        native = record.args[0]  # ("peer_closed", is_application_close, error_code, frame_type, reason)
        if not isinstance(native, tuple) or len(native) < 4 or native[0] != "peer_closed":
            return True
        return not (native[2] in NORMAL_CLOSES and native[3] is None)  # an application close


QH3_LOGGER = "quic"  # the logger qh3.quic.connection writes to
_GOODBYE_FILTER = GoodbyeNotAlarming()


class Qh3Engine(QuicEngine):
    name = "qh3"

    def __init__(self) -> None:
        super().__init__()
        logging.getLogger(QH3_LOGGER).addFilter(_GOODBYE_FILTER)  # a set: added once
        self._tls = importlib.import_module("qh3.tls")
        connection = importlib.import_module("qh3.quic.connection")
        self.stream_errors = (RuntimeError, ValueError, connection.QuicConnectionError)

    def _configuration(self, *, is_client: bool, datagram_size: int, idle_timeout: float) -> Any:
        configuration = super()._configuration(
            is_client=is_client, datagram_size=datagram_size, idle_timeout=idle_timeout
        )
        if is_client:
            # qh3's default list leaves EdDSA out; node certificates are ed25519.
            configuration.signature_algorithms = [self._tls.SignatureAlgorithm.ED25519]
        return configuration

    def server_credentials(
        self, certificate: x509.Certificate, private_key: ed25519.Ed25519PrivateKey
    ) -> ServerCredentials:
        # qh3 takes its own (Rust) certificate and key types, loaded from PEM.
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return ServerCredentials(
            certificate.public_bytes(serialization.Encoding.DER),
            self._tls.load_pem_x509_certificates(certificate.public_bytes(serialization.Encoding.PEM))[0],
            self._tls.load_pem_private_key(key_pem),
        )

    def peer_certificate(self, quic: Any) -> bytes | None:
        certificate = quic.get_peercert()
        der = certificate.public_bytes() if certificate is not None else None
        return der if isinstance(der, bytes) else None

    def receive(self, quic: Any, datagrams: list[tuple[bytes, Any]], now: float) -> None:
        # One call into the native core per run of datagrams from one address.
        i = 0
        while i < len(datagrams):
            addr = datagrams[i][1]
            j = i + 1
            while j < len(datagrams) and datagrams[j][1] == addr:
                j += 1
            if j - i == 1:
                quic.receive_datagram(datagrams[i][0], addr, now=now)
            else:
                quic.receive_many_datagrams([data for data, _ in datagrams[i:j]], addr, now=now)
            i = j

    # qh3's native core decides its ACKs itself and has no delayed-ACK attribute to move.


class AioquicEngine(QuicEngine):
    name = "aioquic"

    def __init__(self) -> None:
        super().__init__()
        tls = importlib.import_module("aioquic.tls")
        self._one_rtt = tls.Epoch.ONE_RTT
        x25519 = tls.Group.X25519
        base = self._connection_class

        class _Connection(base):  # type: ignore[misc, valid-type]
            def _initialize(self, peer_cid: bytes) -> None:
                super()._initialize(peer_cid)
                # One key share instead of four: qh3 2.x's server fails on aioquic's four.
                if self._is_client and isinstance(getattr(self.tls, "_supported_groups", None), list):
                    self.tls._supported_groups = [x25519]

        self._connection_class = _Connection

    def peer_certificate(self, quic: Any) -> bytes | None:
        # aioquic keeps the certificate it checked CertificateVerify against in its TLS context.
        certificate = getattr(quic.tls, "_peer_certificate", None)
        if not isinstance(certificate, x509.Certificate):
            return None
        return certificate.public_bytes(serialization.Encoding.DER)

    def acknowledge_now(self, quic: Any, now: float) -> None:
        # aioquic puts an ACK into a packet only once its delay (1 ms) has run out, and then sends
        # it alone: a request/response exchange faster than that (a tunneled RPC call) pays ~1.4
        # extra datagrams per round trip. Acknowledging early is always allowed (RFC 9000
        # section 13.2.1); this moves the ACK's due time in the 1-RTT packet space.
        spaces = getattr(quic, "_spaces", None)
        space = spaces.get(self._one_rtt) if isinstance(spaces, dict) else None
        if space is not None and isinstance(getattr(space, "ack_at", None), float) and space.ack_at > now:
            space.ack_at = now

    def send_backlog(self, quic: Any, stream_id: int) -> int:
        # aioquic's sender keeps each byte from its write until the peer acknowledges it.
        streams = getattr(quic, "_streams", None)
        stream = streams.get(stream_id) if isinstance(streams, dict) else None
        buffer = getattr(getattr(stream, "sender", None), "_buffer", None)
        return len(buffer) if isinstance(buffer, bytearray) else 0


_ENGINE_CLASSES: dict[str, type[QuicEngine]] = {"qh3": Qh3Engine, "aioquic": AioquicEngine}
_loaded: dict[str, QuicEngine] = {}


def load_engine(name: str) -> QuicEngine:
    """The engine called `name` ("qh3" or "aioquic"); ConfigError if unknown or not installed."""
    engine = _loaded.get(name)
    if engine is not None:
        return engine
    engine_class = _ENGINE_CLASSES.get(name)
    if engine_class is None:
        raise ConfigError(f"unknown QUIC engine {name!r}; choose one of {', '.join(ENGINES)}")
    try:
        engine = engine_class()
    except ImportError as exc:
        raise ConfigError(f"QUIC engine {name!r} is not installed ({exc})") from exc
    _loaded[name] = engine
    return engine
