"""Mesh authentication as a pure state machine: messages in, messages and a verdict out.

It runs on a connection's control stream once QUIC's own TLS handshake is done, and never
touches a socket or a clock (deadlines belong to the caller):

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

Each side stops once in the middle, when it has learned who the peer is, so that the endpoint
can apply its own policy (one link per peer) before going on: the dialer after the listener's
hello (`identified`, then `prove()`), the listener after the dialer's proof (`identified`, then
`accept()`). Any failure is a `Refusal`: the close code, the reason for our log, and what to
tell the peer.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh_llm.peer.identity import NodeIdentity, is_node_id
from mesh_llm.peer.token import MESH_ID_BYTES, MeshCredentials
from mesh_llm.peer.wire import TYPE_FIELD
from mesh_llm.transport._codes import CloseCode

AUTH_VERSION = 1
NONCE_BYTES = 32
MIN_WINDOW = 16 * 1024
MAX_WINDOW = 1 << 30
_AUTH_LABEL = b"mesh-llm auth v1\x00"
_CLIENT_ROLE = b"client"
_SERVER_ROLE = b"server"
_HEX = re.compile(r"[0-9a-f]*")


def strict_hex(value: object, size: int) -> bytes | None:
    """Exactly `size` bytes written as 2*size lowercase hex digits, or None.

    `bytes.fromhex` skips whitespace, so a 31-byte nonce padded with spaces would pass it.
    """
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        return None
    return bytes.fromhex(value)


@dataclass(frozen=True)
class Hello:
    """What each side says of itself before any proof."""

    mesh_id: bytes
    node_id: str
    nonce: bytes
    window: int

    def message(self) -> dict[str, Any]:
        return {
            TYPE_FIELD: "_hello",
            "v": AUTH_VERSION,
            "mesh": self.mesh_id.hex(),
            "node": self.node_id,
            "nonce": self.nonce.hex(),
            "win": self.window,
        }


class BadHello(ValueError):
    """A hello that does not parse; its text says which field."""


def parse_hello(msg: Mapping[str, Any]) -> Hello:
    """The peer's hello, or BadHello."""
    if msg.get(TYPE_FIELD) != "_hello":
        raise BadHello(f"peer sent {msg.get(TYPE_FIELD)!r} where a hello was due")
    if msg.get("v") != AUTH_VERSION:
        raise BadHello(f"peer speaks authentication version {msg.get('v')!r}, not {AUTH_VERSION}")
    node_id = msg.get("node")
    if not is_node_id(node_id):
        raise BadHello("peer's hello has no valid node id")
    window = msg.get("win")
    if not isinstance(window, int) or isinstance(window, bool) or not MIN_WINDOW <= window <= MAX_WINDOW:
        raise BadHello("peer's hello has no valid stream window")
    mesh_id = strict_hex(msg.get("mesh"), MESH_ID_BYTES)
    nonce = strict_hex(msg.get("nonce"), NONCE_BYTES)
    if mesh_id is None:
        raise BadHello("peer's hello has no valid 'mesh'")
    if nonce is None:
        raise BadHello("peer's hello has no valid 'nonce'")
    assert isinstance(node_id, str)
    return Hello(mesh_id, node_id, nonce, window)


def certificate_hash(certificate_der: bytes) -> bytes:
    """What the transcript binds the proofs to: the listener's TLS certificate."""
    return hashlib.sha256(certificate_der).digest()


def certificate_node_id(certificate_der: bytes) -> str | None:
    """The node id a DER certificate's key is, or None if it is not an ed25519 certificate."""
    try:
        key = x509.load_der_x509_certificate(certificate_der).public_key()
    except ValueError:
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def transcript(mesh_id: bytes, server_cert_hash: bytes, client: Hello, server: Hello) -> bytes:
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


def make_proof(role: bytes, secret: bytes, identity: NodeIdentity, transcript: bytes) -> dict[str, Any]:
    # The role prefix stops a dialer's proof from being reflected back as a listener's proof.
    data = role + transcript
    return {
        TYPE_FIELD: "_auth",
        "mac": hmac.new(secret, data, hashlib.sha256).hexdigest(),
        "sig": identity.sign(data).hex(),
    }


def proof_is_valid(
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


@dataclass(frozen=True)
class Refusal:
    """Why authentication failed: the close code, our log's reason, and what the peer is told."""

    code: CloseCode
    reason: str
    tell_peer: str = ""


@dataclass(frozen=True)
class Step:
    """What one input produced: messages to send, and where the handshake now stands."""

    send: tuple[dict[str, Any], ...] = ()
    refusal: Refusal | None = None

    @property
    def failed(self) -> bool:
        return self.refusal is not None


class Phase(enum.Enum):
    SENT_HELLO = "sent hello"  # dialer: waiting for the listener's hello
    WAIT_HELLO = "waiting for hello"  # listener: waiting for the dialer's hello
    IDENTIFIED = "identified"  # the peer is known; the endpoint decides whether to go on
    SENT_PROOF = "sent proof"  # dialer: waiting for the listener's proof
    WAIT_PROOF = "waiting for proof"  # listener: waiting for the dialer's proof
    DONE = "done"
    FAILED = "failed"


class _Side:
    def __init__(
        self, credentials: MeshCredentials, identity: NodeIdentity, window: int, nonce: bytes | None
    ) -> None:
        self._credentials = credentials
        self._identity = identity
        self.ours = Hello(credentials.mesh_id, identity.node_id, nonce or os.urandom(NONCE_BYTES), window)
        self.peer: Hello | None = None
        self.phase: Phase
        self._transcript = b""

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    def _fail(self, code: CloseCode, reason: str, tell_peer: str = "") -> Step:
        self.phase = Phase.FAILED
        return Step(refusal=Refusal(code, reason, tell_peer))

    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise RuntimeError(f"handshake step out of order (in phase {self.phase.value!r})")


class DialerHandshake(_Side):
    """The dialer's half: `start()`, `receive(hello)`, `prove()`, `receive(proof)`."""

    def __init__(
        self,
        credentials: MeshCredentials,
        identity: NodeIdentity,
        window: int,
        *,
        listener_certificate: bytes | None,
        expected_node_id: str | None = None,
        nonce: bytes | None = None,
    ) -> None:
        super().__init__(credentials, identity, window, nonce)
        self._certificate = listener_certificate
        self._expected = expected_node_id
        self.phase = Phase.SENT_HELLO

    def start(self) -> Step:
        """Our hello, the first message of the exchange."""
        return Step(send=(self.ours.message(),))

    def receive(self, msg: Mapping[str, Any]) -> Step:
        """The listener's hello (then `identified`) or its proof (then `done`)."""
        self._expect(Phase.SENT_HELLO, Phase.SENT_PROOF)
        if self.phase is Phase.SENT_HELLO:
            return self._on_hello(msg)
        assert self.peer is not None
        if not proof_is_valid(
            _SERVER_ROLE, self._credentials.secret, self.peer.node_id, self._transcript, msg
        ):
            return self._fail(
                CloseCode.AUTH_FAILED,
                f"node {self.peer.node_id[:8]} did not prove it holds the mesh secret and its node key",
            )
        self.phase = Phase.DONE
        return Step()

    def prove(self) -> Step:
        """Go on after `identified`: our proof."""
        self._expect(Phase.IDENTIFIED)
        self.phase = Phase.SENT_PROOF
        return Step(
            send=(make_proof(_CLIENT_ROLE, self._credentials.secret, self._identity, self._transcript),)
        )

    def _on_hello(self, msg: Mapping[str, Any]) -> Step:
        try:
            theirs = parse_hello(msg)
        except BadHello as exc:
            return self._fail(CloseCode.AUTH_FAILED, str(exc))
        if theirs.mesh_id != self._credentials.mesh_id:
            return self._fail(CloseCode.WRONG_MESH, "it belongs to a different mesh")
        if self._certificate is None or certificate_node_id(self._certificate) != theirs.node_id:
            return self._fail(
                CloseCode.AUTH_FAILED, f"its TLS key is not the node id {theirs.node_id[:8]} it claims"
            )
        if self._expected is not None and theirs.node_id != self._expected:
            return self._fail(
                CloseCode.AUTH_FAILED,
                f"it is node {theirs.node_id[:8]}, not the expected {self._expected[:8]}",
            )
        if theirs.node_id == self.ours.node_id:
            return self._fail(CloseCode.AUTH_FAILED, "it is this node itself")
        self.peer = theirs
        self._transcript = transcript(
            self._credentials.mesh_id, certificate_hash(self._certificate), self.ours, theirs
        )
        self.phase = Phase.IDENTIFIED
        return Step()

    @property
    def identified(self) -> bool:
        return self.phase is Phase.IDENTIFIED


class ListenerHandshake(_Side):
    """The listener's half: `receive(hello)`, `receive(proof)`, then `accept()`."""

    def __init__(
        self,
        credentials: MeshCredentials,
        identity: NodeIdentity,
        window: int,
        *,
        own_certificate: bytes,
        nonce: bytes | None = None,
    ) -> None:
        super().__init__(credentials, identity, window, nonce)
        self._certificate_hash = certificate_hash(own_certificate)
        self.phase = Phase.WAIT_HELLO

    def receive(self, msg: Mapping[str, Any]) -> Step:
        """The dialer's hello (answered with ours) or its proof (then `identified`)."""
        self._expect(Phase.WAIT_HELLO, Phase.WAIT_PROOF)
        if self.phase is Phase.WAIT_HELLO:
            try:
                theirs = parse_hello(msg)
            except BadHello as exc:
                return self._fail(CloseCode.AUTH_FAILED, str(exc), "authentication failed")
            if theirs.mesh_id != self._credentials.mesh_id:
                return self._fail(CloseCode.WRONG_MESH, f"it is in another mesh ({theirs.mesh_id.hex()})")
            if theirs.node_id == self.ours.node_id:
                return self._fail(CloseCode.AUTH_FAILED, "it claims our own node id", "authentication failed")
            self.peer = theirs
            self._transcript = transcript(
                self._credentials.mesh_id, self._certificate_hash, theirs, self.ours
            )
            self.phase = Phase.WAIT_PROOF
            return Step(send=(self.ours.message(),))
        assert self.peer is not None
        if not proof_is_valid(
            _CLIENT_ROLE, self._credentials.secret, self.peer.node_id, self._transcript, msg
        ):
            return self._fail(
                CloseCode.AUTH_FAILED,
                "it did not prove the mesh secret and node key it claims",
                "authentication failed",
            )
        self.phase = Phase.IDENTIFIED
        return Step()

    def accept(self) -> Step:
        """Go on after `identified`: our proof, and the handshake is done."""
        self._expect(Phase.IDENTIFIED)
        self.phase = Phase.DONE
        return Step(
            send=(make_proof(_SERVER_ROLE, self._credentials.secret, self._identity, self._transcript),)
        )

    @property
    def identified(self) -> bool:
        return self.phase is Phase.IDENTIFIED
