"""The gossip engine's timings and limits: built once by the caller, read-only afterwards."""

from __future__ import annotations

from dataclasses import dataclass

from mesh_llm.errors import ConfigError
from mesh_llm.mesh.gossip._fields import MAX_RECORDS_PER_MESSAGE, MAX_TABLE_ENTRIES


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timings and limits of the gossip engine.

    Defaults: a heartbeat every second; a linked peer is suspect after 2.5 s of silence and
    removed after 5 s, checked once a second, so a `kill -9`'d node is gone from every view
    about 6 s after its last heartbeat (requirement: 10 s) while four lost heartbeats in a row
    are still not enough for a false removal. A peer heard only through relays (no direct link:
    a sparse mesh) gets 8 s, since each relay hop may hold its news back up to one interval;
    with the sweep that is still within 10 s.
    """

    push_interval_s: float = 1.0
    suspect_after_s: float = 2.5
    dead_after_s: float = 5.0
    relayed_dead_after_s: float = 8.0
    tombstone_s: float = 30.0  # how long a departed incarnation stays buried
    # Peers that get an asking digest each interval while news must come through relays or a
    # peer is suspect; otherwise one peer gets a plain digest.
    digest_fanout: int = 3
    max_nodes: int = 512
    # Nodes one member may introduce by gossip alone (its share of the table; see _table.py).
    max_introduced_per_peer: int = 128
    max_records_per_message: int = 16

    def __post_init__(self) -> None:
        if self.push_interval_s <= 0:
            raise ConfigError("push_interval_s must be positive")
        if not 0 < self.suspect_after_s <= self.dead_after_s:
            raise ConfigError("suspect_after_s must be positive and at most dead_after_s")
        if self.dead_after_s < 2 * self.push_interval_s:
            raise ConfigError("dead_after_s must span at least two push intervals")
        if self.relayed_dead_after_s < self.dead_after_s:
            raise ConfigError("relayed_dead_after_s must be at least dead_after_s")
        if self.tombstone_s < self.relayed_dead_after_s:
            raise ConfigError("tombstone_s must be at least relayed_dead_after_s")
        if self.digest_fanout < 1:
            raise ConfigError("digest_fanout must be at least 1")
        if not 1 <= self.max_nodes < MAX_TABLE_ENTRIES:
            raise ConfigError(f"max_nodes must be in [1, {MAX_TABLE_ENTRIES - 1}]")
        if not 1 <= self.max_introduced_per_peer <= self.max_nodes:
            raise ConfigError("max_introduced_per_peer must be in [1, max_nodes]")
        if not 1 <= self.max_records_per_message <= MAX_RECORDS_PER_MESSAGE:
            raise ConfigError(f"max_records_per_message must be in [1, {MAX_RECORDS_PER_MESSAGE}]")
