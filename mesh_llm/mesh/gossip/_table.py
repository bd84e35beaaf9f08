"""The peer table: who is in this node's view, and the rules by which news changes it.

Records order by (incarnation, version); a sighting older than `relayed_dead_after_s` proves
nothing; a grave keeps a departed incarnation out for `tombstone_s`; a higher incarnation (a
restart) always gets in. Every change to the view is queued as an event.

Admission (one member cannot fill the table). A node we hold a link to, or that speaks for
itself, is *direct*; any other node is *hearsay*, charged to the member that introduced it. One
member may introduce at most `max_introduced_per_peer` nodes, and when the table is full a
direct node takes the place of a hearsay one (from the member with the most introductions). So
a member gossiping a swarm of self-signed fake nodes fills its own share and no more, and an
honest newcomer that links to us always gets in. A full table, or a member over its share, is
logged once per window.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Final

from mesh_llm.log_limits import RateLimitedLog
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
from mesh_llm.mesh.gossip._records import NodeRecord, Verifier, _sig_bytes, bye_signing_bytes

logger = logging.getLogger("mesh_llm.mesh.gossip")

UNKNOWN_GRAVE_CHECKS: Final = 16  # goodbyes of unknown nodes whose signature one digest may cost


@dataclass(frozen=True, slots=True)
class Grave:
    """A departed incarnation. `heartbeat` None buries it all (goodbye); else beats up to it."""

    incarnation: int
    heartbeat: int | None
    until: float
    sig: str = ""  # the leaving node's signature of its goodbye, relayed with the grave
    # A timeout's last signed beat: its owner's uptime then, and the local time it was credited.
    up_ms: int = -1
    heard_at: float = float("-inf")

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
        self.rejects = RateLimitedLog(logger)  # warnings about what members send, rate-limited
        self.records: dict[str, NodeRecord] = {}  # live peers, as last received (stale heartbeat)
        grace = config.relayed_dead_after_s - config.dead_after_s
        self.detector = FailureDetector(config.suspect_after_s, config.dead_after_s, relay_grace_s=grace)
        self.graves: dict[str, Grave] = {}
        self.pulls: dict[str, float] = {}  # node id -> when an unanswered pull may be repeated
        self.events: deque[GossipEvent] = deque()
        self.links: set[str] = set()  # peers with a direct, authenticated link (the engine's)
        self.returning: dict[str, tuple[int, int, float, str]] = {}  # see `unbury`; pulls bound it
        self.introduced_by: dict[str, str] = {}  # hearsay node -> the member that introduced it
        self._introductions: Counter[str] = Counter()  # member -> hearsay nodes charged to it

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
        if grave is not None and (
            grave.buries(inc, hb) or self._needs_signed_beat(peer_id, node_id, grave, inc)
        ):
            self._keep_buried(node_id, grave, now)
            return False
        if age_s >= self._config.relayed_dead_after_s:
            return False  # the reporter's news is already too old to prove anything
        if record is None:
            return self._may_admit(peer_id, node_id) and self.claim_pull(node_id, now)
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
        # A record's heartbeat is not signed: with signatures checked, only the node itself
        # speaks for its liveness here; relays vouch with its signed beats (digests).
        trust_heartbeat = direct or self._verifier is None
        if current is not None and record.key <= current.key:
            # No news but maybe a heartbeat. Signatures cost CPU: only records we would take are checked.
            if record.incarnation == current.incarnation and trust_heartbeat:
                self.detector.observe(node_id, record.heartbeat, now, age_s, direct)
            return
        if self._verifier is not None and not record.signed_by_owner(self._verifier):
            self.rejects.warning(
                "records not signed by their node",
                "ignoring a record of %s (v%d) from %s: not signed by that node",
                node_id[:16], record.version, peer_id[:16], now=now,
            )  # fmt: skip
            return
        grave = self.graves.get(node_id)
        if grave is not None and (
            grave.buries(record.incarnation, record.heartbeat)
            or self._needs_signed_beat(peer_id, node_id, grave, record.incarnation)
        ):
            self._keep_buried(node_id, grave, now)
            return
        if age_s >= self._config.relayed_dead_after_s:
            return
        beat = record.heartbeat if trust_heartbeat else 0  # a relay's counter could be inflated
        current = self.records.get(node_id)
        if current is None:
            if not self._admit(peer_id, node_id, now):
                return
            self.graves.pop(node_id, None)
            self.records[node_id] = record
            if not (direct or node_id in self.links):
                self.introduced_by[node_id] = peer_id
                self._introductions[peer_id] += 1
            self.detector.forget(node_id)
            self.detector.observe(node_id, beat, now, age_s, direct)
            back = self.returning.pop(node_id, None)
            if back is not None and not trust_heartbeat:  # dated by the signed beat that lifted its grave
                hb, up_ms, heard_at, sig = back
                self.detector.forget(node_id)
                self.detector.observe(node_id, 0, now, now - heard_at)
                self.detector.observe_signed(node_id, hb, up_ms, now, now - heard_at, sig)
            logger.info("peer %s joined (incarnation %d)", node_id[:16], record.incarnation)
            self.events.append(PeerJoined(record))
        elif record.incarnation > current.incarnation:
            self.records[node_id] = record
            self.detector.forget(node_id)
            self.detector.observe(node_id, beat, now, age_s, direct)
            logger.info("peer %s restarted (incarnation %d)", node_id[:16], record.incarnation)
            self.events.append(PeerRestarted(record))
        elif record.incarnation == current.incarnation:
            if trust_heartbeat:
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
            self.vouch(node_id)
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
        for node_id, live in self.detector.sweep_dead(now):
            record = self.records.pop(node_id)
            self.vouch(node_id)
            logger.info("peer %s timed out (incarnation %d)", node_id[:16], record.incarnation)
            # Bury only the beats seen so far: a falsely suspected peer returns with its next one.
            until = now + self._config.tombstone_s
            self.bury(
                node_id, Grave(record.incarnation, live.heartbeat, until, "", live.up_ms, live.heard_at)
            )
            self.events.append(PeerLeft(node_id, record.incarnation, Departure.TIMEOUT))
        for node_id in [n for n, g in self.graves.items() if g.until <= now]:
            del self.graves[node_id]
        self.pulls = {n: t for n, t in self.pulls.items() if t > now}
        self.returning = {n: b for n, b in self.returning.items() if n in self.pulls}

    # ---- goodbyes relayed in digests ---------------------------------------------------------

    def bye_is_genuine(self, node_id: str, inc: int, sig: str) -> bool:
        """Whether `sig` is the node's own signature of its goodbye (always, without a verifier)."""
        if self._verifier is None:
            return True
        raw = _sig_bytes(sig)
        return raw is not None and self._verifier(node_id, bye_signing_bytes(node_id, inc), raw)

    def take_goodbyes(self, gone: list[tuple[str, int, float, str]], now: float) -> None:
        """Apply a digest's graves that carry their node's own goodbye."""
        unknown_checks = UNKNOWN_GRAVE_CHECKS
        for node_id, inc, ttl_s, sig in gone:
            grave = self.graves.get(node_id)
            if grave is not None and grave.heartbeat is None and grave.incarnation >= inc:
                continue  # already buried: no need to check the signature again
            if node_id not in self.records:
                # Graves of nodes we never knew only guard against stale gossip: check a few per
                # digest, so a flood of fake ones costs bounded CPU.
                unknown_checks -= 1
                if unknown_checks < 0:
                    continue
            if not self.bye_is_genuine(node_id, inc, sig):
                continue  # anyone could claim that a live node left: only its own word counts
            # Carry the remaining lifetime, never more than ours, so graves cannot circulate forever.
            self.apply_goodbye(node_id, inc, now, min(ttl_s, self._config.tombstone_s), sig)

    # ---- timed-out nodes that come back ---------------------------------------------------------

    def _needs_signed_beat(self, peer_id: str, node_id: str, grave: Grave, inc: int) -> bool:
        """A node that timed out comes back in the same incarnation on its own word (a link or
        a signed beat, see `unbury`), never on a relay's unsigned counter."""
        return (
            self._verifier is not None
            and grave.heartbeat is not None
            and grave.incarnation == inc
            and node_id != peer_id
            and node_id not in self.links
        )

    def _keep_buried(self, node_id: str, grave: Grave, now: float) -> None:
        """Someone still gossips a buried node: keep its grave while they do, or a member could
        bring a dead node back every time the grave expired by telling of it once more."""
        if self._verifier is not None and grave.until < now + self._config.tombstone_s:
            self.graves[node_id] = replace(grave, until=now + self._config.tombstone_s)

    def returning_at(
        self, peer_id: str, node_id: str, inc: int, hb: int, up_ms: int, age_s: float, now: float
    ) -> float | None:
        """When a relayed beat (inc, hb, up_ms) of a node that timed out shows it alive, if
        recently enough to be worth checking: the beat is credited no more time past the one it
        timed out at than its owner's uptime says passed (so held-back beats buy nothing)."""
        grave = self.graves.get(node_id)
        if grave is None or grave.heartbeat is None or grave.incarnation != inc or hb <= grave.heartbeat:
            return None
        heard_at = now - age_s
        if grave.up_ms >= 0:
            heard_at = min(heard_at, grave.heard_at + (up_ms - grave.up_ms) / 1000)
        if now - heard_at >= self._config.relayed_dead_after_s or not self._may_admit(peer_id, node_id):
            return None
        return heard_at if self.pulls.get(node_id, float("-inf")) <= now else None

    def unbury(self, node_id: str, beat: tuple[int, int, float, str], now: float) -> bool:
        """Its owner signed a beat (hb, up_ms, credited at, sig) past the one it timed out at:
        lift the grave and pull its record, which enters dated by that beat."""
        self.graves.pop(node_id, None)
        self.returning[node_id] = beat
        return self.claim_pull(node_id, now)

    # ---- admission ----------------------------------------------------------------------------

    def vouch(self, node_id: str) -> None:
        """`node_id` no longer counts against the member that introduced it (it linked to us
        directly, or left the view)."""
        introducer = self.introduced_by.pop(node_id, None)
        if introducer is not None:
            self._introductions[introducer] -= 1
            if self._introductions[introducer] <= 0:
                del self._introductions[introducer]

    def introductions(self, peer_id: str) -> int:
        """How many hearsay nodes in the view are charged to `peer_id`."""
        return self._introductions.get(peer_id, 0)

    def _may_admit(self, peer_id: str, node_id: str) -> bool:
        if node_id == peer_id or node_id in self.links:
            return len(self.records) < self._config.max_nodes or bool(self.introduced_by)
        return (
            len(self.records) < self._config.max_nodes
            and self._introductions.get(peer_id, 0) < self._config.max_introduced_per_peer
        )

    def _admit(self, peer_id: str, node_id: str, now: float) -> bool:
        """Whether a new node may enter the view, making room for a direct one if need be."""
        cfg = self._config
        direct = node_id == peer_id or node_id in self.links
        if not direct and self._introductions.get(peer_id, 0) >= cfg.max_introduced_per_peer:
            self.rejects.warning(
                "introductions",
                "member %s has introduced %d nodes, its share: ignoring more it gossips",
                peer_id[:16], cfg.max_introduced_per_peer, now=now,
            )  # fmt: skip
            return False
        if len(self.records) < cfg.max_nodes:
            return True
        if direct and self.introduced_by:
            self._evict_hearsay()
            return True
        self.rejects.warning(
            "table full", "the peer table is full (%d nodes): ignoring node %s from %s",
            cfg.max_nodes, node_id[:16], peer_id[:16], now=now,
        )  # fmt: skip
        return False

    def _evict_hearsay(self) -> None:
        """Drop one hearsay node of the member with the most introductions (deterministically)."""
        member = max(self._introductions, key=lambda p: (self._introductions[p], p))
        victim = max(n for n, p in self.introduced_by.items() if p == member)
        record = self.records.pop(victim)
        self.detector.forget(victim)
        self.vouch(victim)
        logger.info("peer %s dropped for a direct peer (introduced by %s)", victim[:16], member[:16])
        self.events.append(PeerLeft(victim, record.incarnation, Departure.EVICTED))
