"""Invite tokens: everything a new node needs to join a mesh, in one pasteable string.

A token carries the mesh id, the mesh secret (a peer without it is refused before it can do
anything), the inviting node's id (so the joiner can check it reached the right node) and the
addresses it listens on. It is opaque base64url without padding over this layout:

    version      1 byte   (currently 1)
    body_length  2 bytes  big endian
    body         mesh_id (16) | secret (32) | node_id (32, raw public key)
                 | address_count (1) | address_count x (length (1) | "host:port" utf-8)
    checksum     4 bytes  first bytes of SHA-256 over version | body_length | body

The length makes truncation reportable as such, the checksum catches corruption, and decoding
is strict (canonical base64, no trailing bytes) so that no altered string decodes to a token.

Pure: no I/O, randomness only in `new_mesh`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from mesh_llm.errors import ConfigError, TokenError
from mesh_llm.peer.identity import is_node_id

__all__ = [
    "MESH_ID_BYTES",
    "SECRET_BYTES",
    "TOKEN_VERSION",
    "InviteToken",
    "MeshCredentials",
    "format_address",
    "new_mesh",
    "parse_address",
]

TOKEN_VERSION = 1
MESH_ID_BYTES = 16
SECRET_BYTES = 32
_NODE_ID_BYTES = 32
_CHECKSUM_BYTES = 4
_PREFIX = struct.Struct(">BH")  # version, body length
_MAX_ADDRESSES = 255
_MAX_ADDRESS_LENGTH = 255
# Hostnames: dot-separated labels of letters, digits and hyphens (RFC 1123), no leading hyphen.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:port") into (host, port); raise ConfigError if malformed.

    The returned host has no brackets. Ports must be 1-65535.
    """
    if not isinstance(address, str) or not address:
        raise ConfigError(f"address {address!r} is empty")
    if address.startswith("["):
        end = address.find("]")
        if end < 0 or address[end + 1 : end + 2] != ":":
            raise ConfigError(f"address {address!r} is not of the form [ipv6]:port")
        host, port_text = address[1:end], address[end + 2 :]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError("not IPv6")
        except ValueError as exc:
            raise ConfigError(f"address {address!r}: {host!r} is not an IPv6 address") from exc
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"address {address!r} is not of the form host:port")
        if ":" in host:
            raise ConfigError(f"address {address!r}: write IPv6 hosts in brackets, like [::1]:9000")
        if not _HOSTNAME.fullmatch(host):
            raise ConfigError(f"address {address!r}: {host!r} is not a valid host name or IPv4 address")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"address {address!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """Join host and port as "host:port", bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class MeshCredentials:
    """What a member keeps to prove it belongs to a mesh: the mesh id and the shared secret."""

    mesh_id: bytes
    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.mesh_id, bytes) or len(self.mesh_id) != MESH_ID_BYTES:
            raise TokenError(f"a mesh id is {MESH_ID_BYTES} bytes")
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise TokenError(f"a mesh secret is {SECRET_BYTES} bytes")

    @property
    def mesh_id_hex(self) -> str:
        """The mesh id as hex, for display and logs (never log the secret)."""
        return self.mesh_id.hex()

    def invite(self, node_id: str, addresses: tuple[str, ...] | list[str]) -> InviteToken:
        """A token inviting others to this mesh through the node `node_id` at `addresses`."""
        return InviteToken(self.mesh_id, self.secret, node_id, tuple(addresses))

    def __repr__(self) -> str:
        # Keep the secret out of logs and tracebacks.
        return f"MeshCredentials(mesh_id={self.mesh_id.hex()}, secret=<hidden>)"


def new_mesh() -> MeshCredentials:
    """Credentials for a brand-new mesh: a random mesh id and a random secret."""
    return MeshCredentials(os.urandom(MESH_ID_BYTES), os.urandom(SECRET_BYTES))


@dataclass(frozen=True)
class InviteToken:
    """An invitation: mesh credentials plus where and whom to dial first."""

    mesh_id: bytes
    secret: bytes
    node_id: str
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        MeshCredentials(self.mesh_id, self.secret)  # validates both fields
        if not is_node_id(self.node_id):
            raise TokenError("an invite token's node id is 64 lowercase hex characters")
        if not isinstance(self.addresses, tuple):
            raise TokenError("invite token addresses must be a tuple of 'host:port' strings")
        if len(self.addresses) > _MAX_ADDRESSES:
            raise TokenError(f"an invite token holds at most {_MAX_ADDRESSES} addresses")
        for address in self.addresses:
            if len(address.encode("utf-8")) > _MAX_ADDRESS_LENGTH:
                raise TokenError(f"address {address[:40]!r}... is too long for an invite token")
            try:
                parse_address(address)
            except ConfigError as exc:
                raise TokenError(f"invite token has a bad address: {exc}") from exc

    @property
    def credentials(self) -> MeshCredentials:
        """The part of the token a node keeps after joining."""
        return MeshCredentials(self.mesh_id, self.secret)

    def encode(self) -> str:
        """The token as an opaque base64url string (no padding)."""
        body = bytearray(self.mesh_id + self.secret + bytes.fromhex(self.node_id))
        body.append(len(self.addresses))
        for address in self.addresses:
            raw = address.encode("utf-8")
            body.append(len(raw))
            body += raw
        head = _PREFIX.pack(TOKEN_VERSION, len(body)) + bytes(body)
        raw_token = head + hashlib.sha256(head).digest()[:_CHECKSUM_BYTES]
        return base64.urlsafe_b64encode(raw_token).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> InviteToken:
        """Parse a token string; raise TokenError saying what is wrong with it."""
        raw, canonical = _decode_base64url(text)
        if len(raw) < _PREFIX.size:
            raise TokenError("this invite token is truncated (too short to be a token); copy it again")
        version, body_length = _PREFIX.unpack_from(raw)
        if version != TOKEN_VERSION:
            raise TokenError(
                f"this invite token has format version {version}, but this mesh-llm reads version "
                f"{TOKEN_VERSION}; it is corrupted or was made by a different mesh-llm release"
            )
        expected_length = _PREFIX.size + body_length + _CHECKSUM_BYTES
        if len(raw) < expected_length:
            raise TokenError(
                f"this invite token is truncated ({len(raw)} of {expected_length} bytes); copy it again"
            )
        if len(raw) > expected_length:
            raise TokenError("this invite token has extra characters at the end; it is corrupted")
        if not canonical:
            # Unused low bits set in the last character: checked after the length so that a
            # truncated token is reported as truncated.
            raise TokenError("this invite token is corrupted (its last character is not canonical)")
        head, checksum = raw[:-_CHECKSUM_BYTES], raw[-_CHECKSUM_BYTES:]
        if hashlib.sha256(head).digest()[:_CHECKSUM_BYTES] != checksum:
            raise TokenError("this invite token is corrupted (checksum mismatch); copy it again")
        return cls._parse_body(head[_PREFIX.size :])

    @classmethod
    def _parse_body(cls, body: bytes) -> InviteToken:
        # Only reachable with a valid checksum, so a failure here means a token written by a
        # buggy encoder rather than a typo; the message still says what is wrong.
        fixed = MESH_ID_BYTES + SECRET_BYTES + _NODE_ID_BYTES
        if len(body) < fixed + 1:
            raise TokenError("this invite token's body is too short")
        mesh_id = body[:MESH_ID_BYTES]
        secret = body[MESH_ID_BYTES : MESH_ID_BYTES + SECRET_BYTES]
        node_id = body[MESH_ID_BYTES + SECRET_BYTES : fixed].hex()
        count = body[fixed]
        pos = fixed + 1
        addresses: list[str] = []
        for _ in range(count):
            if pos >= len(body) or pos + 1 + body[pos] > len(body):
                raise TokenError("this invite token's address list is cut short")
            length = body[pos]
            try:
                addresses.append(body[pos + 1 : pos + 1 + length].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise TokenError("this invite token has an address that is not text") from exc
            pos += 1 + length
        if pos != len(body):
            raise TokenError("this invite token has unexpected bytes after its address list")
        return cls(mesh_id, secret, node_id, tuple(addresses))

    def __repr__(self) -> str:
        return (
            f"InviteToken(mesh_id={self.mesh_id.hex()}, secret=<hidden>, "
            f"node_id={self.node_id[:8]}, addresses={self.addresses!r})"
        )


def _decode_base64url(text: str) -> tuple[bytes, bool]:
    """The decoded bytes, and whether `text` is their one canonical spelling."""
    if not isinstance(text, str):
        raise TokenError("an invite token is a string")
    # Pasted tokens often carry a trailing newline or surrounding spaces; nothing else is forgiven.
    text = text.strip()
    if not text:
        raise TokenError("the invite token is empty")
    if not _BASE64URL.fullmatch(text):
        bad = next(c for c in text if not (c.isascii() and (c.isalnum() or c in "-_")))
        raise TokenError(f"the invite token contains {bad!r}, which is not a base64url character")
    if len(text) % 4 == 1:
        raise TokenError("this invite token is truncated or has a stray character; copy it again")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError(f"the invite token is not valid base64url: {exc}") from exc
    # Non-canonical spellings are rejected by the caller so that every altered string is an
    # error rather than an alias of a valid token.
    return raw, base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == text


def decode_tokens(values: Iterable[str]) -> list[InviteToken]:
    """Decode --join values, each with a clear error naming the bad one.

    Whitespace anywhere is ignored: a token pasted from a wrapped terminal line or an e-mail
    arrives with spaces or line breaks in it, and the token alphabet (base64url) has none.
    """
    tokens = []
    for i, value in enumerate(values, 1):
        try:
            tokens.append(InviteToken.decode("".join(value.split())))
        except TokenError as exc:
            raise TokenError(f"--join token {i} is not valid: {exc}") from exc
    return tokens
