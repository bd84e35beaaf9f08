from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mesh_llm.api.auth import bearer_matches
from mesh_llm.errors import ConfigError, TokenError
from mesh_llm.mesh.service import local_addresses
from mesh_llm.mesh.state_dir import last_port, load_or_create_credentials
from mesh_llm.peer.token import decode_tokens, new_mesh


def test_a_new_mesh_is_remembered_with_private_permissions(tmp_path: Path) -> None:
    first = load_or_create_credentials(tmp_path, [])
    again = load_or_create_credentials(tmp_path, [])
    assert first == again
    assert stat.S_IMODE((tmp_path / "mesh.json").stat().st_mode) == 0o600


def test_a_join_token_replaces_the_remembered_mesh(tmp_path: Path) -> None:
    load_or_create_credentials(tmp_path, [])
    creds = new_mesh()
    token = creds.invite("ab" * 32, ("127.0.0.1:1",))
    assert load_or_create_credentials(tmp_path, [token]) == creds
    assert load_or_create_credentials(tmp_path, []) == creds


def test_tokens_of_two_meshes_are_refused(tmp_path: Path) -> None:
    a = new_mesh().invite("ab" * 32, ("127.0.0.1:1",))
    b = new_mesh().invite("cd" * 32, ("127.0.0.1:2",))
    with pytest.raises(TokenError, match="different meshes"):
        load_or_create_credentials(tmp_path, [a, b])


def test_a_corrupt_mesh_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.json").write_text("{nope")
    with pytest.raises(ConfigError, match="corrupt"):
        load_or_create_credentials(tmp_path, [])


def test_bad_join_values_name_the_token() -> None:
    good = new_mesh().invite("ab" * 32, ("127.0.0.1:1",)).encode()
    with pytest.raises(TokenError, match="--join token 2 is not valid"):
        decode_tokens([good, good[:-5]])


def test_addresses_list_loopback_last_and_carry_the_port() -> None:
    addrs = local_addresses(4242)
    assert addrs and all(a.endswith(":4242") for a in addrs)
    assert "127.0.0.1:4242" in addrs
    assert not any(a.startswith("[fe80") for a in addrs)


def test_last_port_ignores_garbage(tmp_path: Path) -> None:
    assert last_port(tmp_path) == 0
    (tmp_path / "mesh-port").write_text("70000\n")
    assert last_port(tmp_path) == 0
    (tmp_path / "mesh-port").write_text("4242\n")
    assert last_port(tmp_path) == 4242


@pytest.mark.parametrize(
    ("header", "ok"),
    [("Bearer k3y", True), ("bearer  k3y ", True), ("Bearer k3", False), ("Basic k3y", False), ("", False)],
)
def test_bearer_key_check(header: str, ok: bool) -> None:
    assert bearer_matches(header, "k3y") is ok
