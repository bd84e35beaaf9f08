"""A node built without I/O, seen through its narrow views (no processes, no mesh)."""

from __future__ import annotations

from pathlib import Path

from mesh_llm.config import NodeConfig
from mesh_llm.mesh.identity import NodeIdentity
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.node import Node, NodeResources
from mesh_llm.serving.hardware import Capacity

GB = 1 << 30


def node(tmp_path: Path) -> Node:
    config = NodeConfig(models=("M",), state_dir=tmp_path / "state")
    capacity = Capacity("ram", "cpu", 8 * GB, 6 * GB, 8 * GB, 7 * GB)
    return Node(config, NodeResources(NodeIdentity.generate(), capacity))


def test_building_a_node_touches_no_file(tmp_path: Path) -> None:
    n = node(tmp_path)
    assert not (tmp_path / "state").exists()
    assert n.state == "standby" and n.role == "standby" and n.endpoints() == []


def test_a_model_waiting_for_its_split_host_answers_with_what_it_waits_for(tmp_path: Path) -> None:
    n = node(tmp_path)
    n.split.want(ResolvedModel("Big", tmp_path / "big.gguf", 20 * GB))
    (endpoint,) = n.endpoints()
    assert endpoint.model == "Big" and not endpoint.ready and "electing" in endpoint.state
    assert n.state == "waiting" and n.role == "worker"


def test_the_split_seam_reports_what_the_node_holds(tmp_path: Path) -> None:
    n = node(tmp_path)
    n.on_disk = ("A",)
    n.declined.add("B")
    held = n.holdings()
    assert held.copies == {"A"} and held.declined == {"B"} and n.mesh_peers() == {}
    view = n.split.view(held)
    assert view.me == n.node_id and view.capacity_bytes == 6 * GB and view.peers == {}
