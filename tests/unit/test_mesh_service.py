from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from mesh_llm.api.auth import bearer_matches
from mesh_llm.errors import ConfigError, TokenError
from mesh_llm.mesh.nat import local_addresses
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


async def test_a_member_gossiping_fake_nodes_gets_a_few_dials_a_second_not_one_per_fake(
    tmp_path: Path,
) -> None:
    # The insider's attack (issue 25) through the node's own mesh service, with the transport's
    # dial counted instead of sent: 530 nodes, each signed by a key the member generated.
    import asyncio
    from typing import Any

    from mesh_llm.mesh.gossip import GossipConfig, GossipEngine, NodeRecord
    from mesh_llm.mesh.service import MeshService, MeshSettings, MeshTimings, record_for
    from mesh_llm.peer.identity import NodeIdentity
    from mesh_llm.transport import TransportConfig

    me = NodeIdentity.generate()
    timing = MeshTimings()
    settings = MeshSettings(tmp_path, gossip=GossipConfig(), transport=TransportConfig(), timing=timing)
    service = MeshService(me, new_mesh(), settings, record_for(me.node_id, "0.1.0"))
    dialled: list[str] = []

    async def dial(addresses: list[str], *, expected_node_id: str, timeout: float) -> Any:
        dialled.append(expected_node_id)
        await asyncio.sleep(3600)  # fake addresses never answer

    service.transport.dial = dial  # type: ignore[method-assign,assignment]
    member = NodeIdentity.generate().node_id
    service.engine.peer_connected(member, service._now())
    fakes = []
    for i in range(530):
        key = NodeIdentity.generate()
        record = NodeRecord(node_id=key.node_id, incarnation=1, addresses=(f"203.0.113.{i % 250}:9",))
        fakes.append({"r": GossipEngine(record, signer=key.sign).self_record.to_dict(), "age_ms": 0})
    try:
        began = time.monotonic()
        for start in range(0, len(fakes), 16):
            service._on_message(member, {"t": "records", "records": fakes[start : start + 16]})
        await asyncio.sleep(0.05)
        elapsed = time.monotonic() - began  # a loaded machine takes longer: the bucket refills
        assert len(service.peers()) <= GossipConfig().max_introduced_per_peer
        budget = timing.learned_dials
        assert len(dialled) <= budget.burst + int(budget.rate_per_s * elapsed), elapsed
    finally:
        for task in list(service._tasks):
            task.cancel()
        await asyncio.gather(*service._tasks, return_exceptions=True)


def test_learned_dials_are_paid_from_a_token_bucket() -> None:
    from mesh_llm.mesh._dials import DialBudget, LearnedDials

    dials = LearnedDials(DialBudget(rate_per_s=2.0, burst=4, max_waiting=10))
    for i in range(30):
        dials.offer(f"n{i}", ("10.0.0.1:1",))
    assert len(dials) == 10  # bounded: the oldest offers are forgotten
    assert len(dials.due(0.0)) == 4 and dials.due(0.1) == []
    assert len(dials.due(1.1)) == 2  # 2 a second after the burst
    dials.forget("n29")
    assert [n for n, _ in dials.due(100.0)] == ["n26", "n27", "n28"]


def test_a_flood_of_malformed_gossip_is_one_warning_and_a_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from mesh_llm.mesh.gossip import GossipConfig
    from mesh_llm.mesh.service import MeshService, MeshSettings, MeshTimings, record_for
    from mesh_llm.peer.identity import NodeIdentity
    from mesh_llm.transport import TransportConfig

    me = NodeIdentity.generate()
    settings = MeshSettings(
        tmp_path, gossip=GossipConfig(), transport=TransportConfig(), timing=MeshTimings()
    )
    service = MeshService(me, new_mesh(), settings, record_for(me.node_id, "0.1.0"))
    clock = [100.0]
    service._now = lambda: clock[0]  # type: ignore[method-assign]
    member = NodeIdentity.generate().node_id
    service.engine.peer_connected(member, clock[0])
    with caplog.at_level(logging.WARNING, "mesh_llm.mesh.service"):
        for i in range(1000):  # a second of a 1000 msg/s flood, each message broken differently
            clock[0] += 0.001
            service._on_message(member, {"t": "digest", "entries": f"junk {i}"})
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "malformed gossip" in lines[0]
        # Well after the window, the next one is logged with a summary of what was held back.
        clock[0] += 60
        service._on_message(member, {"t": "pull", "ids": 7})
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3 and lines[1].startswith("999 more like this in the last 6")
