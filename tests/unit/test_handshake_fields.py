"""The handshake's fixed-size fields are parsed strictly (hypothesis-fuzzed hellos too)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.peer.token import MESH_ID_BYTES
from mesh_llm.transport._handshake import AUTH_VERSION, NONCE_BYTES, BadHello, parse_hello, strict_hex

GOOD = {"t": "_hello", "v": 1, "mesh": "ab" * 16, "node": "cd" * 32, "nonce": "ef" * 32, "win": 1 << 20}


def test_strict_hex_takes_exactly_the_size_in_lowercase_hex() -> None:
    assert strict_hex("00ff", 2) == b"\x00\xff"
    for bad in ("00 f", " 0ff", "00FF", "0g00", "00f", "00fff", 7, None):
        assert strict_hex(bad, 2) is None


def test_a_nonce_padded_with_spaces_is_refused() -> None:
    nonce_hex = 2 * NONCE_BYTES
    padded = "ab" * (nonce_hex // 2 - 1) + "a "  # fromhex would skip the space: one byte short
    with pytest.raises(BadHello):
        parse_hello({**GOOD, "v": AUTH_VERSION, "nonce": padded, "mesh": "ab" * MESH_ID_BYTES})


@given(
    st.dictionaries(
        st.sampled_from(list(GOOD)), st.none() | st.booleans() | st.integers() | st.text(max_size=80)
    )
)
def test_any_hello_parses_or_raises_authentication_error(fields: dict[str, Any]) -> None:
    try:
        parse_hello({**GOOD, **fields})
    except BadHello:
        pass
