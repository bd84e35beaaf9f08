"""GossipEngine: the protocol that keeps this node's peer table in step with the mesh (sans-IO).

See the package docstring for the messages and the rules; the table itself is in _table.py.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from mesh_llm.errors import MalformedFrame
from mesh_llm.mesh.gossip._beats import OwnBeat, RelayedBeats, digest_beats
from mesh_llm.mesh.gossip._config import GossipConfig
from mesh_llm.mesh.gossip._events import EngineState, GossipEvent, MessageType, Outgoing, PeerView
from mesh_llm.mesh.gossip._fields import (
    MAX_INT,
    MAX_RECORDS_PER_MESSAGE,
    MAX_TABLE_ENTRIES,
    _as_int,
    _as_list,
    _beat_entry,
    _digest_entries,
    _field,
    _gone_entry,
    _mapping,
    _ms,
    _node_id,
)
from mesh_llm.mesh.gossip._records import (
    NodeRecord,
    Signer,
    Verifier,
    _checked_own,
    bye_signing_bytes,
    record_signing_bytes,
)
from mesh_llm.mesh.gossip._table import PeerTable

logger = logging.getLogger("mesh_llm.mesh.gossip")


class GossipEngine:
    """The peer table of one node and the protocol that keeps it in step with the mesh.

    Inputs: `peer_connected`, `peer_disconnected`, `receive`, `tick`, `update_self`, `leave`.
    Each returns the messages to send now. Changes to the view are queued as events
    (`next_event`). Call `tick` at `get_timer()` (or simply every push interval).
    """

    def __init__(
        self,
        self_record: NodeRecord,
        config: GossipConfig | None = None,
        *,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        """With `verifier`, only records and relayed goodbyes signed by their own node count;
        with `signer`, this node signs its own. (Tests of pure protocol logic may omit both.)"""
        self._config = config or GossipConfig()
        self._id = self_record.node_id
        self._signer = signer
        self._verifier = verifier
        self._self = self._sign(_checked_own(self_record))
        self._heartbeat = self_record.heartbeat
        self._state = EngineState.RUNNING
        self._table = PeerTable(self._id, self._config, verifier)
        # The table's own containers, read here on every message.
        self._records = self._table.records
        self._detector = self._table.detector
        self._graves = self._table.graves
        self._events = self._table.events
        self._links = self._table.links  # shared: links decide who is direct, for admission
        self._own_beat = OwnBeat(self._id, signer)
        self._relayed = RelayedBeats(self._id, self._table, verifier) if verifier is not None else None
        self._next_push = float("-inf")
        # Start the digest round-robin at a different place on every node so no peer gets all of them.
        self._cursor = zlib.crc32(self_record.node_id.encode())
        self._handlers: dict[str, Callable[[str, Mapping[str, Any], float], list[Outgoing]]] = {
            MessageType.HB: self._on_hb,
            MessageType.DIGEST: self._on_digest,
            MessageType.PULL: self._on_pull,
            MessageType.RECORDS: self._on_records,
            MessageType.BYE: self._on_bye,
        }

    # ---- introspection ----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._id

    @property
    def state(self) -> EngineState:
        """RUNNING, or LEFT after `leave`."""
        return self._state

    @property
    def config(self) -> GossipConfig:
        """The engine's configuration."""
        return self._config

    @property
    def self_record(self) -> NodeRecord:
        """This node's record as currently advertised (with its current heartbeat)."""
        return replace(self._self, heartbeat=self._heartbeat)

    def peers(self) -> dict[str, PeerView]:
        """The current view of the mesh, excluding this node, keyed by node id."""
        d = self._detector
        return {
            node_id: PeerView(
                record=record,
                heartbeat=d.heartbeat(node_id),
                last_seen=d.last_seen(node_id),
                connected=node_id in self._links,
                status=d.status(node_id),
            )
            for node_id, record in self._records.items()
        }

    def connected(self) -> frozenset[str]:
        """Peers with a direct link (as reported by the transport)."""
        return frozenset(self._links)

    def next_event(self) -> GossipEvent | None:
        """Pop the oldest pending view change, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `tick` next has work to do: -inf before the first call, None once left."""
        return None if self._state is EngineState.LEFT else self._next_push

    # ---- inputs -----------------------------------------------------------------------------

    def peer_connected(self, peer_id: str, now: float) -> list[Outgoing]:
        """A direct link came up: announce ourselves and catch both sides up with one digest exchange.

        The heartbeat lets the peer pull our record if (and only if) it lacks it; usually it already
        learned it through gossip, which is why it dialed us.
        """
        if self._state is EngineState.LEFT or peer_id == self._id:
            return []
        self._links.add(peer_id)
        self._table.vouch(peer_id)  # an authenticated link: no longer anyone's hearsay
        out: list[Outgoing] = [(peer_id, self._beat())]
        # One asking digest starts a full two-way exchange; the lower id sends it, so a new link
        # costs two digests rather than four.
        if self._id < peer_id:
            out.append((peer_id, self._digest(now, ask=True)))
        return out

    def peer_disconnected(self, peer_id: str, now: float) -> list[Outgoing]:
        """A direct link went down. The peer stays in the view while others still hear from it."""
        self._links.discard(peer_id)
        return []

    def update_self(self, now: float, **changes: Any) -> list[Outgoing]:
        """Change this node's advertised record; the new version goes to every linked peer now.

        `node_id`, `incarnation`, `version` and `heartbeat` are managed here and cannot be set.
        Raises ConfigError if peers would reject the resulting record (too large, bad values).
        """
        reserved = changes.keys() & {"node_id", "incarnation", "version", "heartbeat"}
        if reserved:
            raise ValueError(f"update_self cannot set {sorted(reserved)}")
        if self._state is EngineState.LEFT:
            logger.debug("update_self after leave ignored")
            return []
        fresh = replace(self._self, version=self._self.version + 1, signature="", signed=None, **changes)
        self._self = self._sign(_checked_own(fresh))
        if not self._links:
            return []
        msg = {"t": MessageType.RECORDS.value, "records": [self._own_item()]}
        return [(peer, msg) for peer in sorted(self._links)]

    def receive(self, peer_id: str, msg: object, now: float) -> list[Outgoing]:
        """Handle one message from a directly linked peer; return the replies.

        Unknown message types are ignored (they come from newer nodes). Raises MalformedFrame for
        a known type with a broken shape; nothing from such a message is applied.
        """
        if self._state is EngineState.LEFT or peer_id == self._id:
            return []
        m = msg if type(msg) is dict else _mapping(msg, "gossip message")
        kind = m.get("t")
        handler = self._handlers.get(kind) if type(kind) is str else None
        if handler is None:
            return []
        return handler(peer_id, m, now)

    def tick(self, now: float) -> list[Outgoing]:
        """Periodic work: expire silent peers, drop old graves, heartbeat, anti-entropy digests."""
        if self._state is EngineState.LEFT or now < self._next_push:
            return []
        interval = self._config.push_interval_s
        if self._next_push == float("-inf"):
            # The first tick only starts the schedule: whatever links exist already got our
            # heartbeat and a digest from peer_connected.
            self._next_push = now + interval
            return []
        self._next_push += interval
        if self._next_push <= now:  # we were stalled: re-anchor instead of bursting to catch up
            self._next_push = now + interval

        self._table.expire(now)

        self._heartbeat += 1
        self._own_beat.sign(self._self.incarnation, self._heartbeat, now)
        if not self._links:
            return []
        beat = self._beat()
        out: list[Outgoing] = [(peer, beat) for peer in sorted(self._links)]
        # Digests go to linked peers that are alive in our view (a link to a killed process can
        # linger in the transport for a while).
        targets = sorted(self._links.intersection(self._records))
        if not targets:
            return out
        # In a full mesh everyone hears everyone first-hand and one digest per interval is enough to
        # repair lost messages. If part of our view is second-hand, its liveness reaches us only
        # through digests; and if a peer has gone quiet, others may still hear it (its link to us
        # may be the only thing failing). Then exchange digests with more peers and ask for theirs
        # back, so how fresh our news is does not depend on how many links those peers serve.
        relayed = not self._links.issuperset(self._records) or self._detector.any_suspect()
        digest = self._digest(now, ask=relayed)
        count = min(self._config.digest_fanout if relayed else 1, len(targets))
        start = self._cursor % len(targets)
        self._cursor = start + count
        out.extend((targets[(start + i) % len(targets)], digest) for i in range(count))
        return out

    def leave(self, now: float) -> list[Outgoing]:
        """Say goodbye: linked peers drop this node at once and bury this incarnation."""
        if self._state is EngineState.LEFT:
            return []
        self._set_state(EngineState.LEFT)
        inc = self._self.incarnation
        bye: dict[str, Any] = {"t": MessageType.BYE.value, "inc": inc}
        if self._signer is not None:
            bye["sig"] = self._signer(bye_signing_bytes(self._id, inc)).hex()
        return [(peer, bye) for peer in sorted(self._links)]

    # ---- message handlers -------------------------------------------------------------------

    def _on_hb(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        inc, ver, hb = msg.get("inc"), msg.get("ver"), msg.get("hb")
        if not (
            type(inc) is int and type(ver) is int and type(hb) is int and 0 <= (inc | ver | hb) <= MAX_INT
        ):
            inc = _as_int(_field(msg, "inc", "hb"), "hb.inc")  # slow path: name the broken field
            ver = _as_int(_field(msg, "ver", "hb"), "hb.ver")
            hb = _as_int(_field(msg, "hb", "hb"), "hb.hb")
        record = self._records.get(peer_id)
        if record is not None and inc == record.incarnation and ver <= record.version:
            # Every linked peer sends one of these per interval: keep the common case short.
            self._detector.observe(peer_id, hb, now, 0.0, True)
            self._detector.signed_by_owner(peer_id, hb, msg.get("up"), msg.get("sig"))  # ours to relay
            return []
        if self._table.observe(peer_id, peer_id, inc, ver, hb, 0.0, now):
            return [(peer_id, {"t": MessageType.PULL.value, "ids": [peer_id]})]
        return []

    def _on_digest(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        # Validate everything before applying anything.
        raw_entries = _as_list(_field(msg, "entries", "digest"), "digest.entries", MAX_TABLE_ENTRIES)
        raw_gone = _as_list(_field(msg, "gone", "digest", ()), "digest.gone", MAX_TABLE_ENTRIES)
        raw_beats = _as_list(_field(msg, "beats", "digest", ()), "digest.beats", MAX_TABLE_ENTRIES)
        entries = _digest_entries(raw_entries)
        gone = [_gone_entry(g, i) for i, g in enumerate(raw_gone)]
        beats = [_beat_entry(b, i) for i, b in enumerate(raw_beats)]
        ask = _field(msg, "ask", "digest", False)
        if not isinstance(ask, bool):
            raise MalformedFrame("digest.ask: expected a boolean")
        self._table.take_goodbyes(gone, now)

        # Anti-entropy is pull-only: we fetch what the digest shows we lack, and the sender catches
        # up from the digests it receives (ours, if it asked). Pulls are de-duplicated; pushes from
        # every peer at once would not be.
        want: list[str] = []
        records = self._records
        observe = self._detector.observe
        # With signatures checked, a relay's word on liveness counts only as its owner's signed
        # beats (below): an unsigned counter from a member could keep a dead node alive for ever.
        trust_relays = self._verifier is None
        for node_id, inc, ver, hb, age_s in entries:
            mine = records.get(node_id)
            if mine is not None and inc == mine.incarnation:
                # The common case, inlined: a peer we know, in the incarnation we know.
                if trust_relays or node_id == peer_id:
                    observe(node_id, hb, now, age_s, node_id == peer_id)
                if ver > mine.version and self._table.claim_pull(node_id, now):
                    want.append(node_id)
            elif self._table.observe(peer_id, node_id, inc, ver, hb, age_s, now):
                want.append(node_id)
        if beats and self._relayed is not None:
            want.extend(self._relayed.take(peer_id, beats, now))

        out: list[Outgoing] = []
        if want:
            out.append((peer_id, {"t": MessageType.PULL.value, "ids": want}))
        if ask:
            out.append((peer_id, self._digest(now)))  # never asks back: no ping-pong
        return out

    def _on_pull(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        ids = _as_list(_field(msg, "ids", "pull"), "pull.ids", MAX_TABLE_ENTRIES)
        wanted = [_node_id(n, f"pull.ids[{i}]") for i, n in enumerate(ids)]
        return self._records_messages(peer_id, wanted, now)

    def _on_records(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        items = _as_list(_field(msg, "records", "records"), "records.records", MAX_RECORDS_PER_MESSAGE)
        parsed: list[tuple[NodeRecord, float]] = []
        for i, item in enumerate(items):
            m = _mapping(item, f"records[{i}]")
            record = NodeRecord.from_dict(_field(m, "r", f"records[{i}]"))
            age_ms = _as_int(_field(m, "age_ms", f"records[{i}]"), f"records[{i}].age_ms")
            parsed.append((record, age_ms / 1000))
        for record, age_s in parsed:
            self._table.merge(peer_id, record, age_s, now)
        return []

    def _on_bye(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        # Straight from the leaving node over its authenticated link; the signature, when valid,
        # lets us relay the goodbye to nodes that have no link to it.
        inc = _as_int(_field(msg, "inc", "bye"), "bye.inc")
        sig = _field(msg, "sig", "bye", "")
        sig = sig if isinstance(sig, str) and self._table.bye_is_genuine(peer_id, inc, sig) else ""
        self._table.apply_goodbye(peer_id, inc, now, self._config.tombstone_s, sig)
        return []

    def _sign(self, record: NodeRecord) -> NodeRecord:
        if self._signer is None:
            return record
        body = {k: v for k, v in record.unsigned_dict().items() if k != "heartbeat"}
        return replace(
            record, signed=MappingProxyType(body), signature=self._signer(record_signing_bytes(body)).hex()
        )

    # ---- helpers ----------------------------------------------------------------------------

    def _beat(self) -> dict[str, Any]:
        own = self._self
        beat = {"t": MessageType.HB.value, "inc": own.incarnation, "ver": own.version, "hb": self._heartbeat}
        if self._own_beat.signed is not None:
            beat["up"], beat["sig"] = self._own_beat.signed
        return beat

    def _digest(self, now: float, ask: bool = False) -> dict[str, Any]:
        own = self._self
        records = self._records
        entries: list[list[Any]] = [[own.node_id, own.incarnation, own.version, self._heartbeat, 0]]
        for node_id, heartbeat, age_ms in self._detector.rows(now):
            record = records[node_id]
            entries.append([node_id, record.incarnation, record.version, heartbeat, age_ms])
        gone = [
            [n, g.incarnation, _ms(g.until - now), *([g.sig] if g.sig else [])]
            for n, g in self._graves.items()
            if g.heartbeat is None and (g.sig or self._verifier is None)
        ]
        digest = {"t": MessageType.DIGEST.value, "entries": entries, "gone": gone, "ask": ask}
        if self._signer is not None:  # older nodes ignore the field
            digest["beats"] = digest_beats(self._table, self._own_beat, own.incarnation, self._heartbeat, now)
        return digest

    def _records_messages(self, peer_id: str, node_ids: Iterable[str], now: float) -> list[Outgoing]:
        """Records for the given ids that we know, chunked to stay within the frame limit."""
        items: list[dict[str, Any]] = []
        for node_id in node_ids:
            if node_id == self._id:
                items.append(self._own_item())
            elif node_id in self._records:
                wire = self._records[node_id].to_dict()
                wire["heartbeat"] = self._detector.heartbeat(node_id)  # the latest, not as received
                items.append({"r": wire, "age_ms": _ms(now - self._detector.last_seen(node_id))})
        size = self._config.max_records_per_message
        return [
            (peer_id, {"t": MessageType.RECORDS.value, "records": items[i : i + size]})
            for i in range(0, len(items), size)
        ]

    def _own_item(self) -> dict[str, Any]:
        wire = self._self.to_dict()
        wire["heartbeat"] = self._heartbeat
        return {"r": wire, "age_ms": 0}

    def _set_state(self, state: EngineState) -> None:
        logger.info("gossip %s: %s -> %s", self._id[:16], self._state.value, state.value)
        self._state = state
