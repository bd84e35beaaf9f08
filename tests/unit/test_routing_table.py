"""The routing table is a pure function of what the node knows: given a view, the table."""

from __future__ import annotations

import pytest

from mesh_llm.api.routing import Endpoint
from mesh_llm.mesh.gossip import ModelAd, NodeRecord, PeerStatus, PeerView
from mesh_llm.node import routing
from mesh_llm.node.routing import UNREACHABLE, RoutingInputs, RoutingTable, derive_table
from mesh_llm.planning.demand import StandbyInfo

ME, PEER, SPARE = "m" * 16, "p" * 16, "s" * 16
GB = 1 << 30


def peer(models: tuple[ModelAd, ...], *, connected: bool = True, role: str = "host") -> PeerView:
    record = NodeRecord(
        node_id=PEER, incarnation=1, software="0.1.0", role=role, capacity_bytes=GB, models=models
    )
    status = PeerStatus.ALIVE if connected else PeerStatus.SUSPECT
    return PeerView(record, heartbeat=1, last_seen=1.0, connected=connected, status=status)


def test_local_and_remote_hosts_are_listed_and_served() -> None:
    local = (Endpoint("A", ME, True, local=True, free_slots=4),)
    table = derive_table(
        RoutingInputs(
            ME, now=10.0, local=local, servers=frozenset({"A"}), peers={PEER: peer((ModelAd("B", True),))}
        )
    )
    assert [(e.model, e.node_id, e.ready) for e in table.endpoints] == [("A", ME, True), ("B", PEER, True)]
    assert table.served == {"A": (ME,), "B": (PEER,)}
    assert [c["id"] for c in table.cards] == ["A", "B"]
    assert table.known == {"A": 10.0, "B": 10.0}


def test_a_lost_host_is_unreachable_and_serves_nothing() -> None:
    table = derive_table(
        RoutingInputs(ME, now=1.0, peers={PEER: peer((ModelAd("B", True),), connected=False)})
    )
    (endpoint,) = table.endpoints
    assert endpoint.state == UNREACHABLE and not endpoint.ready
    assert table.served == {}


def test_a_model_seen_before_fails_clearly_until_it_is_forgotten() -> None:
    inputs = RoutingInputs(
        ME, now=100.0, known={"Gone": 50.0}, known_memory_s=60.0, declined=frozenset({"Gone"})
    )
    (endpoint,) = derive_table(inputs).endpoints
    assert endpoint.state.startswith("offline") and "mesh-llm drop" in endpoint.state
    later = derive_table(RoutingInputs(ME, now=200.0, known={"Gone": 50.0}, known_memory_s=60.0))
    assert later.endpoints == () and later.known == {}


def test_a_model_asked_for_that_nobody_serves_names_the_standby_that_takes_it() -> None:
    standby = StandbyInfo(SPARE, 8 * GB, frozenset({"W"}), True)
    table = derive_table(
        RoutingInputs(
            ME, now=5.0, standbys=(standby,), recent=frozenset({"W"}), sizes={"W": GB}, rates={"W": 0.5}
        )
    )
    (endpoint,) = table.endpoints
    assert endpoint.model == "W" and f"standby node {SPARE[:8]}" in endpoint.state
    assert "W" in table.wanted and table.standby_work[SPARE].model == "W"


def test_load_changes_copy_the_table_without_planning_again(monkeypatch: pytest.MonkeyPatch) -> None:
    local = (
        Endpoint("A", ME, True, local=True, free_slots=4),
        Endpoint("S", ME, False, local=True, state="x"),
    )
    table = derive_table(
        RoutingInputs(
            ME, now=1.0, local=local, servers=frozenset({"A"}), slotted=frozenset({"A"}), n_parallel=4
        )
    )

    def no_planning(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("a load change planned again")

    monkeypatch.setattr(routing, "assign_standby_work", no_planning)
    loaded = table.with_load({"A": 3})
    a, s = loaded.endpoints
    assert (a.in_flight, a.free_slots) == (3, 1) and s == local[1]
    assert table.endpoints[0].in_flight == 0  # the old table is unchanged: readers keep theirs


def test_reading_the_table_twice_does_no_work(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    from mesh_llm.config import NodeConfig
    from mesh_llm.node import Node, NodeResources
    from mesh_llm.peer.identity import NodeIdentity
    from mesh_llm.serving.hardware import Capacity

    assert isinstance(tmp_path, Path)
    config = NodeConfig(models=("M",), state_dir=tmp_path / "state")
    n = Node(config, NodeResources(NodeIdentity.generate(), Capacity("ram", "cpu", GB, GB, GB, GB)))
    derived: list[RoutingTable] = []
    real = routing.derive_table
    monkeypatch.setattr(
        "mesh_llm.node._lifecycle.derive_table", lambda i: derived.append(real(i)) or derived[-1]
    )
    first, cards = n.front.endpoints(), n.front.model_cards()
    assert (
        n.front.endpoints() == first and n.front.model_cards() == cards and n.status()["node_id"] == n.node_id
    )
    assert derived == [] and n.table is n.front.table
    n.serving.set_pending("M", None)  # a change: derived once
    assert len(derived) == 1
