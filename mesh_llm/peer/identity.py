"""A node's long-lived identity: an ed25519 key whose public half is the node id.

The node id is the lowercase hex of the 32-byte raw public key, so anyone holding a node id can
check that node's signatures without a certificate authority. The same key signs the
self-signed certificate the node presents in QUIC's TLS handshake, which lets a dialer check
that the TLS endpoint it reached is the node it asked for.

Everything here is pure except the key file helpers (`load_or_create`, `rotate`), which keep
the private key in a PEM file readable only by its owner (mode 0600, parent directory 0700).
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from mesh_llm.errors import ConfigError

__all__ = ["NODE_ID_HEX_LENGTH", "NodeIdentity", "is_node_id"]

log = logging.getLogger(__name__)

NODE_ID_HEX_LENGTH = 64
_SHORT_ID_LENGTH = 8
# Far enough out that no node outlives its certificate; validity is never what we check.
_CERT_LIFETIME = datetime.timedelta(days=3650)


def is_node_id(value: object) -> bool:
    """True if `value` is a well-formed node id: 64 lowercase hex characters."""
    return (
        isinstance(value, str)
        and len(value) == NODE_ID_HEX_LENGTH
        and all(c in "0123456789abcdef" for c in value)
    )


class NodeIdentity:
    """An ed25519 key pair; the node id is the hex of its raw public key."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._node_id = self._public_raw.hex()
        self._certificate: x509.Certificate | None = None

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random identity, kept only in memory (ephemeral nodes, tests)."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> NodeIdentity:
        """Rebuild an identity from the 32-byte raw private key."""
        try:
            return cls(ed25519.Ed25519PrivateKey.from_private_bytes(raw))
        except ValueError as exc:
            raise ConfigError(f"not an ed25519 private key: {exc}") from exc

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> NodeIdentity:
        """Load the key at `path`, or create it (mode 0600, parent directory 0700) if absent.

        A file that exists but cannot be read as an ed25519 key raises `ConfigError` rather
        than being replaced: silently minting a new key would change the node's identity.
        """
        key_path = Path(path)
        if not key_path.exists():
            identity = cls.generate()
            if identity._write(key_path, replace=False):
                log.info("created node key %s (node %s)", key_path, identity.short_id)
                return identity
            # Another process created the file between our check and our write: use theirs.
        return cls._read(key_path)

    @classmethod
    def rotate(cls, path: str | os.PathLike[str]) -> NodeIdentity:
        """Replace the key at `path` with a fresh one (atomically) and return it."""
        identity = cls.generate()
        identity._write(Path(path), replace=True)
        log.info("rotated node key %s (new node %s)", path, identity.short_id)
        return identity

    # --- identity -----------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """Lowercase hex of the 32-byte raw public key."""
        return self._node_id

    @property
    def short_id(self) -> str:
        """The first 8 characters of the node id, for logs and tables."""
        return self._node_id[:_SHORT_ID_LENGTH]

    @property
    def public_key_bytes(self) -> bytes:
        """The 32-byte raw public key."""
        return self._public_raw

    @property
    def private_key(self) -> ed25519.Ed25519PrivateKey:
        """The private key object (for the TLS layer)."""
        return self._private_key

    def sign(self, data: bytes) -> bytes:
        """A 64-byte ed25519 signature of `data`."""
        return self._private_key.sign(data)

    @staticmethod
    def verify(node_id: str, data: bytes, signature: bytes) -> bool:
        """True if `signature` is `node_id`'s signature of `data`; False for anything malformed."""
        if not is_node_id(node_id):
            return False
        try:
            public_key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(node_id))
            public_key.verify(signature, data)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def tls_certificate(self) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
        """A self-signed certificate for this key, and the key, as the QUIC engines take them.

        The subject common name is the node id; peers do not check dates or names, only that
        the certificate's public key is the node id they expect.
        """
        if self._certificate is None:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self._node_id)])
            # Back-date a little so a peer whose clock lags ours never sees a future certificate.
            now = datetime.datetime.now(datetime.UTC)
            self._certificate = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self._private_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + _CERT_LIFETIME)
                .sign(self._private_key, algorithm=None)  # ed25519 signs without a separate hash
            )
        return self._certificate, self._private_key

    def __repr__(self) -> str:
        return f"NodeIdentity({self.short_id})"

    # --- key file -----------------------------------------------------------------------------

    @classmethod
    def _read(cls, path: Path) -> NodeIdentity:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                # A key others can read is a key others may have copied; tighten and say so.
                log.warning("node key %s had mode %o; restricting it to 0600", path, mode)
                os.chmod(path, 0o600)
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read node key {path}: {exc.strerror or exc}") from exc
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"node key {path} is not a readable private key ({exc}); "
                "move it away or run `mesh-llm rotate-key` to create a new identity"
            ) from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"node key {path} is not an ed25519 key")
        return cls(key)

    def _write(self, path: Path, *, replace: bool) -> bool:
        """Write the key to `path` atomically; with replace=False, False if the file appeared."""
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            if not path.parent.exists():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Write a private temp file next to the target, then move it into place, so a
            # crash never leaves a half-written key and the key is never briefly world-readable.
            # mkstemp creates the file with mode 0600.
            fd, tmp_name = tempfile.mkstemp(prefix=".node-key-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pem)
                    fh.flush()
                    os.fsync(fh.fileno())
                if replace:
                    os.replace(tmp_name, path)
                else:
                    try:
                        # link() fails if the target exists: create-if-absent without a race.
                        os.link(tmp_name, path)
                    except FileExistsError:
                        return False
                    except OSError:
                        # Some filesystems have no hard links; fall back to a plain move.
                        if path.exists():
                            return False
                        os.replace(tmp_name, path)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
        except OSError as exc:
            raise ConfigError(f"cannot write node key {path}: {exc.strerror or exc}") from exc
        return True
