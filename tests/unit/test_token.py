"""Invite tokens: round trips, and every truncation or corruption is a TokenError."""

from __future__ import annotations

import base64
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import ConfigError, TokenError
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import (
    TOKEN_VERSION,
    InviteToken,
    MeshCredentials,
    format_address,
    new_mesh,
    parse_address,
)

_ALPHABET = string.ascii_letters + string.digits + "-_"


def _token(addresses: tuple[str, ...] = ("192.168.1.20:7842", "[fe80::1]:7842")) -> InviteToken:
    return new_mesh().invite(NodeIdentity.generate().node_id, addresses)


def _raw(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
hostname = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
address = st.builds(
    lambda host, port: f"{host}:{port}", st.one_of(ipv4, ipv6, hostname), st.integers(1, 65535)
)
tokens = st.builds(
    InviteToken,
    mesh_id=st.binary(min_size=16, max_size=16),
    secret=st.binary(min_size=32, max_size=32),
    node_id=st.binary(min_size=32, max_size=32).map(bytes.hex),
    addresses=st.lists(address, max_size=6).map(tuple),
)


def test_round_trip() -> None:
    token = _token()
    assert InviteToken.decode(token.encode()) == token


@given(tokens)
def test_any_token_round_trips(token: InviteToken) -> None:
    assert InviteToken.decode(token.encode()) == token


def test_encoding_is_unpadded_base64url_with_version_first() -> None:
    text = _token().encode()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", text)
    assert _raw(text)[0] == TOKEN_VERSION


def test_surrounding_whitespace_is_ignored() -> None:
    token = _token()
    assert InviteToken.decode(f"  {token.encode()}\n") == token


def test_every_truncation_is_rejected() -> None:
    text = _token().encode()
    for length in range(len(text)):
        with pytest.raises(TokenError):
            InviteToken.decode(text[:length])


def test_truncation_is_named_in_the_message() -> None:
    text = _token().encode()
    with pytest.raises(TokenError, match="truncated"):
        InviteToken.decode(text[: len(text) - 8])


def test_every_single_character_substitution_is_rejected() -> None:
    text = _token().encode()
    for position, original in enumerate(text):
        for replacement in _ALPHABET:
            if replacement == original:
                continue
            corrupted = text[:position] + replacement + text[position + 1 :]
            with pytest.raises(TokenError):
                InviteToken.decode(corrupted)


@settings(max_examples=150, deadline=None)
@given(tokens, st.data())
def test_random_byte_corruptions_are_rejected(token: InviteToken, data: st.DataObject) -> None:
    raw = bytearray(_raw(token.encode()))
    positions = data.draw(st.sets(st.integers(0, len(raw) - 1), min_size=1, max_size=4))
    for position in positions:
        raw[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(TokenError):
        InviteToken.decode(_b64(bytes(raw)))


def test_extra_bytes_are_rejected() -> None:
    raw = _raw(_token().encode())
    with pytest.raises(TokenError, match="extra"):
        InviteToken.decode(_b64(raw + b"\x00\x00\x00"))


def test_a_different_version_is_named_in_the_message() -> None:
    raw = bytearray(_raw(_token().encode()))
    raw[0] = TOKEN_VERSION + 1
    with pytest.raises(TokenError, match="version 2"):
        InviteToken.decode(_b64(bytes(raw)))


@pytest.mark.parametrize("text", ["", "   ", "abc!def", "ab cd", "мир", "a", "AAAA"])
def test_garbage_is_rejected(text: str) -> None:
    with pytest.raises(TokenError):
        InviteToken.decode(text)


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_token_errors(text: str) -> None:
    try:
        InviteToken.decode(text)
    except TokenError:
        pass


def test_non_string_input_is_a_token_error() -> None:
    with pytest.raises(TokenError):
        InviteToken.decode(b"bytes")  # type: ignore[arg-type]


def test_token_errors_are_config_errors() -> None:
    assert issubclass(TokenError, ConfigError)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mesh_id": b"short"}, "mesh id"),
        ({"secret": b"short"}, "secret"),
        ({"node_id": "XYZ"}, "node id"),
        ({"addresses": ("nohost",)}, "address"),
        ({"addresses": ("h:0",)}, "address"),
        ({"addresses": ["127.0.0.1:1"]}, "tuple"),
        ({"addresses": ("h:1",) * 256}, "at most"),
    ],
)
def test_invalid_fields_are_rejected(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "mesh_id": b"\x01" * 16,
        "secret": b"\x02" * 32,
        "node_id": "ab" * 32,
        "addresses": (),
    }
    fields.update(kwargs)
    with pytest.raises(TokenError, match=message):
        InviteToken(**fields)  # type: ignore[arg-type]


def test_repr_hides_the_secret() -> None:
    token = _token()
    assert token.secret.hex() not in repr(token)
    assert token.secret.hex() not in repr(token.credentials)
    assert "hidden" in repr(token)


def test_new_mesh_is_random_and_credentials_come_back_from_a_token() -> None:
    first, second = new_mesh(), new_mesh()
    assert first.mesh_id != second.mesh_id and first.secret != second.secret
    token = first.invite("ab" * 32, ["127.0.0.1:9000"])
    assert token.credentials == first
    assert first.mesh_id_hex == first.mesh_id.hex()
    with pytest.raises(TokenError):
        MeshCredentials(b"x", b"y")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:9337", ("127.0.0.1", 9337)),
        ("[::1]:80", ("::1", 80)),
        ("node-1.example.org:65535", ("node-1.example.org", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert format_address(*expected) == text


@pytest.mark.parametrize(
    "text",
    ["", "host", ":80", "host:", "host:0", "host:65536", "::1:80", "[::1]80", "[1.2.3.4]:80", "a b:1", "h:٣"],
)
def test_parse_address_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)
