"""What split hosting sees of the node, and may ask of it: a narrow seam instead of the Node.

The node implements `SplitContext`; a test can implement it with a few dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mesh_llm.mesh.gossip import PeerView
from mesh_llm.mesh.tunnel import TcpTunnel
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.serving.hardware import Capacity
from mesh_llm.serving.model_server import ModelServer


@dataclass(frozen=True)
class Holdings:
    """The models this node has copies of, and the ones its user dropped here."""

    on_disk: frozenset[str] = frozenset()  # in the model cache
    resolved: Mapping[str, ResolvedModel] = field(default_factory=dict)  # asked for and resolved here
    local_files: Mapping[str, Path] = field(default_factory=dict)  # in <state-dir>/models/
    declined: frozenset[str] = frozenset()

    @property
    def copies(self) -> frozenset[str]:
        """Every model this node has a GGUF of."""
        return self.on_disk | frozenset(self.resolved) | frozenset(self.local_files)


class SplitContext(Protocol):
    """The node as split hosting sees it."""

    @property
    def node_id(self) -> str: ...

    @property
    def capacity(self) -> Capacity: ...

    def holdings(self) -> Holdings:
        """The models this node holds copies of, at this instant."""
        ...

    def mesh_peers(self) -> Mapping[str, PeerView]:
        """The peers of the mesh this node is in (none outside a mesh)."""
        ...

    def rtt_min_ms(self, peer_id: str) -> float | None:
        """The lowest recent round trip to `peer_id`; None without a link."""
        ...

    async def open_rpc_tunnel(self, peer_id: str, model: str, epoch: int) -> TcpTunnel | None:
        """A local TCP port bridged to `peer_id`'s RPC worker for `model`; None without a link."""
        ...

    def split_changed(self) -> None:
        """Something split hosting publishes changed: re-advertise and tell the console."""
        ...

    def add_server(self, server: ModelServer) -> None:
        """Serve HTTP for a split host's model server (it joins the node's own model servers)."""
        ...

    def remove_server(self, name: str) -> None:
        """The split host's model server of `name` is going away."""
        ...

    def add_resolved(self, model: ResolvedModel) -> None:
        """This node now holds `model` (it took over coordinating it)."""
        ...
