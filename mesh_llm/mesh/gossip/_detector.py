"""The failure detector: a node is alive while its heartbeat counter keeps advancing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mesh_llm.mesh.gossip._events import PeerStatus
from mesh_llm.mesh.gossip._fields import MAX_INT, SIG_HEX, _ms

logger = logging.getLogger("mesh_llm.mesh.gossip")


@dataclass(slots=True)
class NodeLiveness:
    heartbeat: int
    heard_at: float  # when the heartbeat last advanced, per the freshest report
    direct_at: float  # when the node itself last reached us
    status: PeerStatus
    # The node's own signature of `heartbeat` and its uptime then, when we have them: what we
    # relay, and what bounds how much time the next relayed beat may be credited.
    sig: str = ""
    up_ms: int = -1


class FailureDetector:
    """Heartbeat-progress failure detector on a caller-supplied clock.

    A node is alive while its heartbeat counter keeps advancing. Observations may be second-hand:
    `age_s` says how long ago the reporter saw that heartbeat advance, so a heartbeat relayed over
    several hops is dated from the first observer, and relaying cannot extend a dead node's life.
    A node whose latest news came through relays rather than from itself (a sparse mesh) gets
    `relay_grace_s` longer, since each relay hop may hold news back for up to a push interval.
    """

    def __init__(self, suspect_after_s: float, dead_after_s: float, relay_grace_s: float = 0.0) -> None:
        self._suspect_after_s = suspect_after_s
        self._dead_after_s = dead_after_s
        self._relay_grace_s = relay_grace_s
        self._nodes: dict[str, NodeLiveness] = {}

    def observe(
        self, node_id: str, heartbeat: int, now: float, age_s: float = 0.0, direct: bool = False
    ) -> bool:
        """Record that `heartbeat` of `node_id` was seen `age_s` before `now`; True if it is news.

        `direct` means the node itself told us (as opposed to a relay).
        """
        heard_at = now - age_s if age_s > 0 else now
        live = self._nodes.get(node_id)
        if live is None:
            direct_at = now if direct else float("-inf")
            self._nodes[node_id] = NodeLiveness(heartbeat, heard_at, direct_at, PeerStatus.ALIVE)
            return True
        if direct:
            live.direct_at = now
            if heartbeat < live.heartbeat:
                # The node itself outranks any relay: a member that relayed an inflated counter
                # would otherwise make the node's own beats look old and get it declared dead.
                live.heartbeat = heartbeat
                live.heard_at = now
                live.sig, live.up_ms = "", -1
                return True
        if heartbeat < live.heartbeat:
            return False  # old news, the usual case for relayed sightings
        if heartbeat > live.heartbeat:
            live.heartbeat = heartbeat
            live.sig, live.up_ms = "", -1  # unsigned until `signed_by_owner` says otherwise
            # Never move backwards: a relayed sighting of a newer beat can be older than ours.
            if heard_at > live.heard_at:
                live.heard_at = heard_at
        elif heartbeat == live.heartbeat and heard_at > live.heard_at:
            live.heard_at = heard_at  # someone saw the same beat more recently
        else:
            return False
        if live.status is not PeerStatus.ALIVE and now - live.heard_at < self._suspect_after_s:
            logger.debug("peer %s: %s -> alive", node_id[:16], live.status.value)
            live.status = PeerStatus.ALIVE
        return True

    def signed_by_owner(self, node_id: str, heartbeat: int, up_ms: object, sig: object) -> None:
        """The node itself sent `sig` with its current beat: keep it to relay (unchecked here;
        whoever relies on it checks it). Anything not shaped like a signature is ignored."""
        live = self._nodes.get(node_id)
        if live is None or live.heartbeat != heartbeat or type(sig) is not str or len(sig) != SIG_HEX:
            return
        if type(up_ms) is int and 0 <= up_ms <= MAX_INT:
            live.sig, live.up_ms = sig, up_ms

    def observe_signed(
        self, node_id: str, heartbeat: int, up_ms: int, now: float, age_s: float, sig: str
    ) -> bool:
        """A relayed beat whose owner's signature the caller checked; True if it is news.

        Only a higher beat counts, and it is credited no more time than passed at its owner
        since the last signed beat credited here (`up_ms` is signed): a relay that held beats
        back and releases them one at a time gains nothing, and a beat told again is not news.
        So a dead node's liveness ends with its own last signature, whoever relays it.
        """
        live = self._nodes.get(node_id)
        if live is None or heartbeat <= live.heartbeat or up_ms < live.up_ms:
            return False
        heard_at = now - max(age_s, 0.0)
        if live.up_ms >= 0:
            heard_at = min(heard_at, live.heard_at + (up_ms - live.up_ms) / 1000)
        live.heartbeat, live.sig, live.up_ms = heartbeat, sig, up_ms
        if heard_at > live.heard_at:
            live.heard_at = heard_at
        if live.status is not PeerStatus.ALIVE and now - live.heard_at < self._suspect_after_s:
            logger.debug("peer %s: %s -> alive", node_id[:16], live.status.value)
            live.status = PeerStatus.ALIVE
        return True

    def signed_rows(self, now: float) -> list[tuple[str, int, int, int, str]]:
        """(node id, heartbeat, its uptime, ms since it advanced, its signature) where signed."""
        return [
            (n, live.heartbeat, live.up_ms, _ms(now - live.heard_at), live.sig)
            for n, live in self._nodes.items()
            if live.sig
        ]

    def forget(self, node_id: str) -> None:
        """Stop tracking a node (it left, or restarted and is tracked afresh)."""
        self._nodes.pop(node_id, None)

    def heartbeat(self, node_id: str) -> int:
        """The highest heartbeat seen for a tracked node."""
        return self._nodes[node_id].heartbeat

    def last_seen(self, node_id: str) -> float:
        """Local time at which a tracked node's heartbeat last advanced."""
        return self._nodes[node_id].heard_at

    def status(self, node_id: str) -> PeerStatus:
        """Status of a tracked node as of the last `sweep`."""
        return self._nodes[node_id].status

    def rows(self, now: float) -> list[tuple[str, int, int]]:
        """(node id, heartbeat, ms since it last advanced) for every tracked node."""
        return [(node_id, live.heartbeat, _ms(now - live.heard_at)) for node_id, live in self._nodes.items()]

    def sweep(self, now: float) -> list[tuple[str, int]]:
        """Update suspicion; return (and stop tracking) nodes silent too long, with their last beat."""
        return [(node_id, live.heartbeat) for node_id, live in self.sweep_dead(now)]

    def sweep_dead(self, now: float) -> list[tuple[str, NodeLiveness]]:
        """`sweep`, returning what was known of each dead node's liveness at the end."""
        dead: list[tuple[str, NodeLiveness]] = []
        grace = self._relay_grace_s
        for node_id, live in self._nodes.items():
            silent = now - live.heard_at
            if live.direct_at < live.heard_at - grace:
                silent -= grace  # heard only through relays lately
            if silent >= self._dead_after_s:
                dead.append((node_id, live))
            elif silent >= self._suspect_after_s and live.status is PeerStatus.ALIVE:
                logger.debug("peer %s: alive -> suspect (silent %.1f s)", node_id[:16], silent)
                live.status = PeerStatus.SUSPECT
        for node_id, _ in dead:
            del self._nodes[node_id]
        return dead

    def any_suspect(self) -> bool:
        """Whether some tracked node was suspect at the last sweep and has not been heard since."""
        return any(live.status is PeerStatus.SUSPECT for live in self._nodes.values())
