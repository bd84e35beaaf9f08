"""The peer table: who is in this node's view, and the rules by which news changes it.

Records order by (incarnation, version); a sighting older than `relayed_dead_after_s` proves
nothing; a grave keeps a departed incarnation out for `tombstone_s`; a higher incarnation (a
restart) always gets in. Every change to the view is queued as an event.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from mesh_llm.mesh.gossip._config import GossipConfig
from mesh_llm.mesh.gossip._detector import FailureDetector
from mesh_llm.mesh.gossip._events import (
    Departure,
    GossipEvent,
    PeerJoined,
    PeerLeft,
    PeerRestarted,
    PeerUpdated,
)
from mesh_llm.mesh.gossip._fields import MAX_TABLE_ENTRIES
from mesh_llm.mesh.gossip._records import NodeRecord, Verifier

logger = logging.getLogger("mesh_llm.mesh.gossip")


@dataclass(frozen=True, slots=True)
class Grave:
    """A departed incarnation. `heartbeat` None buries it all (goodbye); else beats up to it."""

    incarnation: int
    heartbeat: int | None
    until: float
    sig: str = ""  # the leaving node's signature of its goodbye, relayed with the grave

    def buries(self, incarnation: int, heartbeat: int) -> bool:
        if incarnation != self.incarnation:
            return incarnation < self.incarnation
        return self.heartbeat is None or heartbeat <= self.heartbeat


class PeerTable:
    """The live peers (records as received), their liveness, graves, and pulls in flight."""

    def __init__(self, own_id: str, config: GossipConfig, verifier: Verifier | None) -> None:
        self._id = own_id
        self._config = config
        self._verifier = verifier
        self._refused: set[tuple[str, int, int]] = set()
        self.records: dict[str, NodeRecord] = {}  # live peers, as last received (stale heartbeat)
        grace = config.relayed_dead_after_s - config.dead_after_s
        self.detector = FailureDetector(config.suspect_after_s, config.dead_after_s, relay_grace_s=grace)
        self.graves: dict[str, Grave] = {}
        self.pulls: dict[str, float] = {}  # node id -> when an unanswered pull may be repeated
        self.events: deque[GossipEvent] = deque()

    def observe(
        self, peer_id: str, node_id: str, inc: int, ver: int, hb: int, age_s: float, now: float
    ) -> bool:
        """Take in `peer_id`'s sighting of (inc, ver, hb); return True if we should pull that record."""
        record = self.records.get(node_id)
        if record is not None and inc == record.incarnation:  # the common case: a known live peer
            self.detector.observe(node_id, hb, now, age_s, direct=node_id == peer_id)
            return ver > record.version and self.claim_pull(node_id, now)
        if node_id == self._id:
            return False  # we are the only authority on our own record
        grave = self.graves.get(node_id)
        if grave is not None and grave.buries(inc, hb):
            return False
        if age_s >= self._config.relayed_dead_after_s:
            return False  # the reporter's news is already too old to prove anything
        if record is None:
            return len(self.records) < self._config.max_nodes and self.claim_pull(node_id, now)
        # A higher incarnation is a restart: fetch the new record.
        return inc > record.incarnation and self.claim_pull(node_id, now)

    def claim_pull(self, node_id: str, now: float) -> bool:
        # One request in flight per node: during a join every digest names the same missing records.
        if self.pulls.get(node_id, float("-inf")) > now:
            return False
        self.pulls[node_id] = now + self._config.push_interval_s
        return True

    def merge(self, peer_id: str, record: NodeRecord, age_s: float, now: float) -> None:
        node_id = record.node_id
        direct = node_id == peer_id
        if node_id == self._id:
            return
        current = self.records.get(node_id)
        if current is not None and record.key <= current.key:
            # No news but maybe a heartbeat (as unsigned as a digest's). Signatures cost CPU:
            # only records we would take are checked.
            if record.incarnation == current.incarnation:
                self.detector.observe(node_id, record.heartbeat, now, age_s, direct)
            return
        if self._verifier is not None and not record.signed_by_owner(self._verifier):
            key = (node_id, record.incarnation, record.version)
            if key not in self._refused and len(self._refused) < MAX_TABLE_ENTRIES:
                self._refused.add(key)
                logger.warning(
                    "ignoring a record of %s (v%d) from %s: not signed by that node",
                    node_id[:16], record.version, peer_id[:16],
                )  # fmt: skip
            return
        grave = self.graves.get(node_id)
        if grave is not None and grave.buries(record.incarnation, record.heartbeat):
            return
        if age_s >= self._config.relayed_dead_after_s:
            return
        current = self.records.get(node_id)
        if current is None:
            if len(self.records) >= self._config.max_nodes:
                return
            self.graves.pop(node_id, None)
            self.records[node_id] = record
            self.detector.forget(node_id)
            self.detector.observe(node_id, record.heartbeat, now, age_s, direct)
            logger.info("peer %s joined (incarnation %d)", node_id[:16], record.incarnation)
            self.events.append(PeerJoined(record))
        elif record.incarnation > current.incarnation:
            self.records[node_id] = record
            self.detector.forget(node_id)
            self.detector.observe(node_id, record.heartbeat, now, age_s, direct)
            logger.info("peer %s restarted (incarnation %d)", node_id[:16], record.incarnation)
            self.events.append(PeerRestarted(record))
        elif record.incarnation == current.incarnation:
            self.detector.observe(node_id, record.heartbeat, now, age_s, direct)
            if record.version > current.version:
                self.records[node_id] = record
                self.events.append(PeerUpdated(record))

    def apply_goodbye(self, node_id: str, inc: int, now: float, ttl_s: float, sig: str = "") -> None:
        if node_id == self._id:
            return
        record = self.records.get(node_id)
        if record is not None and record.incarnation > inc:
            return  # a goodbye from an older incarnation; the node already restarted
        existing = self.graves.get(node_id)
        if existing is not None and (existing.incarnation, existing.heartbeat is None) >= (inc, True):
            return  # already buried; keeping the old deadline stops graves circulating forever
        self.bury(node_id, Grave(inc, None, now + ttl_s, sig))
        if record is not None:
            del self.records[node_id]
            self.detector.forget(node_id)
            logger.info("peer %s said goodbye (incarnation %d)", node_id[:16], inc)
            self.events.append(PeerLeft(node_id, inc, Departure.BYE))

    def bury(self, node_id: str, grave: Grave) -> None:
        self.graves[node_id] = grave
        if len(self.graves) > MAX_TABLE_ENTRIES:
            # Bounded memory under a flood of goodbyes: forget the grave that expires first.
            oldest = min(self.graves, key=lambda n: self.graves[n].until)
            del self.graves[oldest]

    def expire(self, now: float) -> None:
        """Remove peers silent too long, drop expired graves and pulls."""
        for node_id, last_beat in self.detector.sweep(now):
            record = self.records.pop(node_id)
            logger.info("peer %s timed out (incarnation %d)", node_id[:16], record.incarnation)
            # Bury only the beats seen so far: a falsely suspected peer returns with its next one.
            self.bury(node_id, Grave(record.incarnation, last_beat, now + self._config.tombstone_s))
            self.events.append(PeerLeft(node_id, record.incarnation, Departure.TIMEOUT))
        for node_id in [n for n, g in self.graves.items() if g.until <= now]:
            del self.graves[node_id]
        self.pulls = {n: t for n, t in self.pulls.items() if t > now}
