"""The node as discovery sees it: a frozen `MeshFacts` snapshot in, three actions out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mesh_llm.peer.token import InviteToken


@dataclass(frozen=True)
class MeshFacts:
    """What discovery needs to know about this node's mesh right now."""

    node_id: str
    mesh_id: str
    invite_token: str
    mesh_port: int
    node_count: int  # serving-capable nodes, this one included unless it is a client
    client_count: int
    serving: tuple[str, ...]
    wanted: tuple[str, ...]
    on_disk: tuple[str, ...]
    total_vram_bytes: int
    peers: frozenset[str]  # node ids of live peers
    members: tuple[str, ...]  # node ids of serving-capable live members, this one included


class DiscoveryHost(Protocol):
    """The node as discovery sees it."""

    @property
    def is_client(self) -> bool: ...

    def mesh_facts(self) -> MeshFacts | None: ...

    async def join_mesh(self, token: InviteToken, timeout_s: float) -> bool: ...

    async def start_own_mesh(self) -> None: ...

    def discovery_changed(self) -> None: ...
