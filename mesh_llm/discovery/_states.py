"""What discovery is doing, as typed records that carry their data (pure).

    Starting -> Discovering -> Joining(mesh) -> Member
                            -> LookingAgain(retry_s) -> Discovering -> ...   (a client)
    Member -> Discovering (the mesh was lost) / Joining (a bigger mesh, or ours was left alone)

`Discovery._set_state` is the one transition, logged old -> new. Each record's `text` is what
the node's status and console have always shown (``"joining NAME (…)"``, ``"no mesh found;
looking again in 15 s"``); code decides on the type, never on the text.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh_llm.discovery._listing import Found


@dataclass(frozen=True)
class Starting:
    """Discovery has not run yet."""

    @property
    def text(self) -> str:
        return "starting"


@dataclass(frozen=True)
class Discovering:
    """Looking on the LAN and the relays for a mesh to join."""

    @property
    def text(self) -> str:
        return "discovering"


@dataclass(frozen=True)
class Joining:
    """Dialling the inviter of a mesh that was found."""

    name: str | None
    mesh_id: str
    node_count: int
    source: str  # "lan" or "nostr"

    @classmethod
    def of(cls, found: Found) -> Joining:
        """The join of the mesh that `found` lists."""
        li = found.listing
        return cls(name=li.name, mesh_id=li.mesh_id, node_count=li.node_count, source=found.source)

    @property
    def label(self) -> str:
        """The mesh, as logs and status name it."""
        return f"{self.name or 'unnamed'} ({self.mesh_id[:8]}, {self.node_count} node(s), via {self.source})"

    @property
    def text(self) -> str:
        return f"joining {self.label}"


@dataclass(frozen=True)
class Member:
    """In a mesh (found, joined by token, or our own): publishing and watching."""

    @property
    def text(self) -> str:
        return "member"


@dataclass(frozen=True)
class LookingAgain:
    """A client found no mesh; it looks again after `retry_s` seconds."""

    retry_s: float

    @property
    def text(self) -> str:
        return f"no mesh found; looking again in {self.retry_s:.0f} s"


DiscoveryState = Starting | Discovering | Joining | Member | LookingAgain
