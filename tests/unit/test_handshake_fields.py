"""The handshake's fixed-size fields are parsed strictly (hypothesis-fuzzed hellos too)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.errors import AuthenticationError
from mesh_llm.mesh.transport import _parse_hello, strict_hex

GOOD = {"t": "_hello", "v": 1, "mesh": "ab" * 16, "node": "cd" * 32, "nonce": "ef" * 32, "win": 1 << 20}


def test_strict_hex_takes_exactly_the_size_in_lowercase_hex() -> None:
    assert strict_hex("00ff", 2) == b"\x00\xff"
    for bad in ("00 f", " 0ff", "00FF", "0g00", "00f", "00fff", 7, None):
        assert strict_hex(bad, 2) is None


def test_a_nonce_padded_with_spaces_is_refused() -> None:
    from mesh_llm.mesh import transport

    nonce_hex = 2 * transport._NONCE_BYTES
    padded = "ab" * (nonce_hex // 2 - 1) + "a "  # fromhex would skip the space: one byte short
    with pytest.raises(AuthenticationError):
        _parse_hello(
            {**GOOD, "v": transport._AUTH_VERSION, "nonce": padded, "mesh": "ab" * transport.MESH_ID_BYTES}
        )


@given(
    st.dictionaries(
        st.sampled_from(list(GOOD)), st.none() | st.booleans() | st.integers() | st.text(max_size=80)
    )
)
def test_any_hello_parses_or_raises_authentication_error(fields: dict[str, Any]) -> None:
    try:
        _parse_hello({**GOOD, **fields})
    except AuthenticationError:
        pass
