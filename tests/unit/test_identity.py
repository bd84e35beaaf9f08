"""Node identity: ids, signatures, the key file and the TLS certificate."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh_llm.errors import ConfigError
from mesh_llm.peer.identity import NodeIdentity, is_node_id


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_node_id_is_lowercase_hex_of_the_raw_public_key() -> None:
    identity = NodeIdentity.generate()
    raw = identity.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert identity.node_id == raw.hex()
    assert is_node_id(identity.node_id)
    assert identity.short_id == identity.node_id[:8]
    assert identity.public_key_bytes == raw


def test_generated_identities_differ() -> None:
    assert NodeIdentity.generate().node_id != NodeIdentity.generate().node_id


def test_signature_verifies_only_for_the_signer_and_the_data() -> None:
    alice, bob = NodeIdentity.generate(), NodeIdentity.generate()
    signature = alice.sign(b"hello mesh")
    assert NodeIdentity.verify(alice.node_id, b"hello mesh", signature)
    assert not NodeIdentity.verify(alice.node_id, b"hello mesh!", signature)
    assert not NodeIdentity.verify(bob.node_id, b"hello mesh", signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not NodeIdentity.verify(alice.node_id, b"hello mesh", tampered)


@pytest.mark.parametrize(
    "node_id, signature",
    [
        ("", b"\x00" * 64),
        ("zz" * 32, b"\x00" * 64),
        ("AB" * 32, b"\x00" * 64),  # ids are lowercase
        ("ab" * 31, b"\x00" * 64),
        ("ab" * 32, b"short"),
        ("ab" * 32, b""),
    ],
)
def test_verify_returns_false_for_malformed_input(node_id: str, signature: bytes) -> None:
    assert NodeIdentity.verify(node_id, b"data", signature) is False


def test_load_or_create_makes_a_private_key_file_and_reloads_it(tmp_path: Path) -> None:
    key_path = tmp_path / "state" / "node.key"
    created = NodeIdentity.load_or_create(key_path)
    assert _mode(key_path) == 0o600
    assert _mode(key_path.parent) == 0o700
    assert NodeIdentity.load_or_create(key_path).node_id == created.node_id
    assert not [p for p in key_path.parent.iterdir() if p.name != "node.key"], "no temp files left"


def test_load_or_create_keeps_an_existing_directory_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    NodeIdentity.load_or_create(tmp_path / "node.key")
    assert _mode(tmp_path) == 0o755


def test_load_or_create_tightens_a_readable_key_file(tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    created = NodeIdentity.load_or_create(key_path)
    os.chmod(key_path, 0o644)
    assert NodeIdentity.load_or_create(key_path).node_id == created.node_id
    assert _mode(key_path) == 0o600


def test_a_corrupt_key_file_is_an_error_and_is_not_replaced(tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    key_path.write_bytes(b"not a key")
    key_path.chmod(0o600)
    with pytest.raises(ConfigError, match="rotate-key"):
        NodeIdentity.load_or_create(key_path)
    assert key_path.read_bytes() == b"not a key"


def test_a_key_of_another_type_is_an_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key_path = tmp_path / "node.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    with pytest.raises(ConfigError, match="ed25519"):
        NodeIdentity.load_or_create(key_path)


def test_rotate_replaces_the_key_atomically(tmp_path: Path) -> None:
    key_path = tmp_path / "node.key"
    old = NodeIdentity.load_or_create(key_path)
    new = NodeIdentity.rotate(key_path)
    assert new.node_id != old.node_id
    assert NodeIdentity.load_or_create(key_path).node_id == new.node_id
    assert _mode(key_path) == 0o600


def test_unwritable_location_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        NodeIdentity.load_or_create(blocker / "node.key")


def test_private_bytes_round_trip_and_bad_bytes() -> None:
    identity = NodeIdentity.generate()
    raw = identity.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert NodeIdentity.from_private_bytes(raw).node_id == identity.node_id
    with pytest.raises(ConfigError):
        NodeIdentity.from_private_bytes(b"\x00" * 5)


def test_tls_certificate_is_self_signed_by_the_node_key() -> None:
    identity = NodeIdentity.generate()
    certificate, key = identity.tls_certificate()
    assert key is identity.private_key
    public = certificate.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    assert (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        == identity.node_id
    )
    public.verify(certificate.signature, certificate.tbs_certificate_bytes)  # raises if not self-signed
    assert certificate.subject == certificate.issuer
    assert identity.tls_certificate()[0] is certificate, "the certificate is built once"


def test_repr_shows_only_the_short_id() -> None:
    identity = NodeIdentity.generate()
    assert repr(identity) == f"NodeIdentity({identity.short_id})"
