"""The engine's states, the view changes it reports, and one peer as seen from here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, TypeAlias

from mesh_llm.mesh.gossip._records import NodeRecord

Outgoing: TypeAlias = tuple[str, dict[str, Any]]
"""A message to send: (peer node id, JSON-able dict). Dicts may be shared between peers: don't mutate."""


class EngineState(Enum):
    """Lifecycle of the local engine."""

    RUNNING = "running"
    LEFT = "left"  # said goodbye; sends and accepts nothing more


class PeerStatus(Enum):
    """Liveness of a peer in the view."""

    ALIVE = "alive"
    SUSPECT = "suspect"  # heartbeat stalled past suspect_after_s; still listed, better not routed to


class Departure(Enum):
    """Why a peer left the view."""

    BYE = "bye"
    TIMEOUT = "timeout"
    EVICTED = "evicted"  # hearsay dropped to make room for a directly linked peer


class MessageType(StrEnum):
    """The "t" field of every gossip message."""

    HB = "hb"
    DIGEST = "digest"
    PULL = "pull"
    RECORDS = "records"
    BYE = "bye"


# Event records are as received; `PeerView.heartbeat` has the latest heartbeat.


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """A node entered the view (new, or back after a timeout or restart after goodbye)."""

    record: NodeRecord


@dataclass(frozen=True, slots=True)
class PeerUpdated:
    """A node in the view published a newer version of its record."""

    record: NodeRecord


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """A node in the view came back with a higher incarnation: its old process is gone."""

    record: NodeRecord


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """A node left the view."""

    node_id: str
    incarnation: int
    reason: Departure


GossipEvent: TypeAlias = PeerJoined | PeerUpdated | PeerRestarted | PeerLeft


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as this node sees it.

    `record.heartbeat` is the heartbeat at the time that version arrived; `heartbeat` is the
    latest one seen. `last_seen` is on the local clock: when the heartbeat last advanced.
    """

    record: NodeRecord
    heartbeat: int
    last_seen: float
    connected: bool
    status: PeerStatus
