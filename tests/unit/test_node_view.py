"""A node built without I/O, seen through its narrow views (no processes, no mesh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_llm.config import NodeConfig
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.node import Node, NodeResources
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.serving.hardware import Capacity

GB = 1 << 30


def node(tmp_path: Path) -> Node:
    config = NodeConfig(models=("M",), state_dir=tmp_path / "state")
    capacity = Capacity("ram", "cpu", 8 * GB, 6 * GB, 8 * GB, 7 * GB)
    return Node(config, NodeResources(NodeIdentity.generate(), capacity))


def test_building_a_node_touches_no_file(tmp_path: Path) -> None:
    n = node(tmp_path)
    assert not (tmp_path / "state").exists()
    assert n.state == "standby" and n.role == "standby"


def test_a_model_asked_for_is_not_ready_until_it_has_a_server(tmp_path: Path) -> None:
    from mesh_llm.api.routing import choose
    from mesh_llm.errors import NoHealthyHost
    from mesh_llm.models.states import Failed, Resolving

    n = node(tmp_path)
    # Before the models start (the API port is already open): a 503 to retry, not a 404.
    (endpoint,) = n.front.endpoints()
    assert (endpoint.model, endpoint.ready, endpoint.local, endpoint.state) == ("M", False, True, "starting")
    with pytest.raises(NoHealthyHost, match="starting"):
        choose("m", n.front.endpoints())
    n.serving.set_pending("M", Resolving())
    assert [e.state for e in n.front.endpoints()] == ["resolving"]
    n.serving.set_pending("M", Failed("no such file"))  # no longer this node's to start
    assert not any(e.local for e in n.front.endpoints())


def test_a_model_waiting_for_its_split_host_answers_with_what_it_waits_for(tmp_path: Path) -> None:
    n = node(tmp_path)
    n.placement.split.want(ResolvedModel("Big", tmp_path / "big.gguf", 20 * GB))
    n.changed()  # what placement reports once it wants a split
    (endpoint,) = [e for e in n.front.endpoints() if e.model == "Big"]
    assert not endpoint.ready and "electing" in endpoint.state
    assert n.state == "waiting" and n.role == "worker"


def test_the_split_seam_reports_what_the_node_holds(tmp_path: Path) -> None:
    n = node(tmp_path)
    n.serving.on_disk = ("A",)
    n.serving.declined.add("B")
    held = n.placement.holdings()
    assert held.copies == {"A"} and held.declined == {"B"} and n.placement.mesh_peers() == {}
    view = n.placement.split.view(held)
    assert view.me == n.node_id and view.capacity_bytes == 6 * GB and view.peers == {}


def test_a_model_whose_host_is_lost_counts_as_unserved_for_the_standbys(tmp_path: Path) -> None:
    from mesh_llm.mesh.gossip import ModelAd, NodeRecord, PeerStatus, PeerView

    n = node(tmp_path)
    n.serving.asked.clear()
    record = NodeRecord(node_id="p" * 16, incarnation=1, software="0.1.0", role="host", capacity_bytes=GB,
                        models=(ModelAd("M", ready=True),))  # fmt: skip
    peers = {"p" * 16: PeerView(record, heartbeat=1, last_seen=1.0, connected=True, status=PeerStatus.ALIVE)}

    class Transport:
        def suspects(self) -> frozenset[str]:
            return frozenset()

    class Mesh:
        join_problem = None
        transport = Transport()

        def peers(self) -> dict[str, PeerView]:
            return peers

    n.membership.mesh = Mesh()  # type: ignore[assignment]
    n.refresh()  # what the mesh's change callback does
    assert n.table.served == {"M": ("p" * 16,)}
    # Killed: still in the table, but lost. A standby that takes M over takes an unserved model.
    peers["p" * 16] = PeerView(record, heartbeat=1, last_seen=1.0, connected=False, status=PeerStatus.SUSPECT)
    n.refresh()
    assert n.table.served == {}
