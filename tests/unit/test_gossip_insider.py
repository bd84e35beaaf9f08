"""A member with a valid token attacks membership (issue 25): built, as the attacker built it,
from the project's own engine and keys, in memory on a simulated clock.

The insider M holds authenticated links, so every message it sends is accepted as its own. It
may invent nodes (each signed by a key it generates), relay heartbeats for a node that was
`kill -9`'d, replay or hoard the beats it did receive, and flood malformed messages.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import MalformedFrame
from mesh_llm.mesh.gossip import GossipConfig, GossipEngine, NodeRecord
from mesh_llm.peer.identity import NodeIdentity

Outgoing = list[tuple[str, dict[str, Any]]]
DEFAULTS = GossipConfig()


class Mesh:
    """Engines with real keys, links between them, and a clock; messages are delivered at once."""

    def __init__(self, config: GossipConfig = DEFAULTS) -> None:
        self.config = config
        self.engines: dict[str, GossipEngine] = {}
        self.links: set[frozenset[str]] = set()
        self.now = 0.0
        self.withheld: list[tuple[str, str, dict[str, Any]]] | None = None  # set: M holds its digests
        self.holder = ""

    def node(self, **fields: Any) -> str:
        key = NodeIdentity.generate()
        record = NodeRecord(node_id=key.node_id, incarnation=1, addresses=("10.0.0.1:1",), **fields)
        self.engines[key.node_id] = GossipEngine(
            record, self.config, signer=key.sign, verifier=NodeIdentity.verify
        )
        return key.node_id

    def link(self, a: str, b: str) -> None:
        self.links.add(frozenset((a, b)))
        self.deliver(a, self.engines[a].peer_connected(b, self.now))
        self.deliver(b, self.engines[b].peer_connected(a, self.now))

    def kill(self, node_id: str) -> None:
        """kill -9: no goodbye; its links vanish with it."""
        del self.engines[node_id]
        self.links = {pair for pair in self.links if node_id not in pair}

    def deliver(self, sender: str, out: Outgoing, tap: Outgoing | None = None) -> None:
        queue = [(sender, peer, msg) for peer, msg in out]
        for _ in range(10_000):
            if not queue:
                return
            src, dst, msg = queue.pop(0)
            if dst not in self.engines or frozenset((src, dst)) not in self.links:
                continue
            if self.withheld is not None and src == self.holder and msg.get("t") == "digest":
                self.withheld.append((src, dst, msg))
                continue
            if tap is not None:
                tap.append((dst, msg))
            queue += [(dst, p, m) for p, m in self.engines[dst].receive(src, msg, self.now)]
        raise AssertionError("messages kept flowing")

    def run(self, seconds: float, dt: float = 0.5, tap: dict[str, Outgoing] | None = None) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + dt, 6)
            for node_id in list(self.engines):
                out = self.engines[node_id].tick(self.now)
                self.deliver(node_id, out, None if tap is None else tap.get(node_id))


def _line() -> tuple[Mesh, str, str, str]:
    """A - M - B: B hears A only through M."""
    mesh = Mesh()
    a, m, b = mesh.node(role="host"), mesh.node(), mesh.node()
    mesh.link(a, m)
    mesh.link(m, b)
    mesh.run(5)
    assert a in mesh.engines[b].peers() and not mesh.engines[b].peers()[a].connected
    return mesh, a, m, b


# ---- liveness a relay cannot forge -------------------------------------------------------------


def test_a_node_reached_only_through_relays_stays_in_view() -> None:
    mesh, a, _, b = _line()
    mesh.run(60)
    view = mesh.engines[b].peers()
    assert a in view and view[a].status.value == "alive"
    assert [e for e in iter(mesh.engines[b].next_event, None) if type(e).__name__ == "PeerLeft"] == []


def _forged_beats(mesh: Mesh, m: str, a: str, record: NodeRecord, hb: int) -> list[dict[str, Any]]:
    inc, ver = record.incarnation, record.version
    return [
        {"t": "digest", "entries": [[m, 1, 1, hb, 0], [a, inc, ver, hb, 0]], "gone": [], "ask": False,
         "beats": [[a, inc, hb, hb * 1000, 0, "ab" * 64]]},
        {"t": "records", "records": [{"r": {**record.to_dict(), "heartbeat": hb}, "age_ms": 0}]},
    ]  # fmt: skip


def test_a_member_relaying_heartbeats_cannot_keep_a_killed_node_alive() -> None:
    mesh, a, m, b = _line()
    record = mesh.engines[b].peers()[a].record
    mesh.kill(a)
    killed_at = mesh.now
    gone_at = None
    for i in range(120):  # two minutes of ever-increasing, unsigned or badly signed heartbeats
        mesh.run(0.5)
        for msg in _forged_beats(mesh, m, a, record, 10_000 + i):
            mesh.engines[b].receive(m, msg, mesh.now)
        if gone_at is None and a not in mesh.engines[b].peers():
            gone_at = mesh.now
        assert gone_at is None or a not in mesh.engines[b].peers(), "the dead node came back"
    assert gone_at is not None
    assert gone_at - killed_at <= DEFAULTS.relayed_dead_after_s + 2 * DEFAULTS.push_interval_s


def _dated_now(msg: dict[str, Any]) -> dict[str, Any]:
    return {**msg, "beats": [[*beat[:4], 0, beat[5]] for beat in msg.get("beats", [])],
            "entries": [[*e[:4], 0] for e in msg["entries"]]}  # fmt: skip


def test_replaying_a_dead_nodes_last_signed_beat_does_not_extend_its_life() -> None:
    mesh, a, m, b = _line()
    seen: dict[str, Outgoing] = {b: []}
    mesh.run(5, tap=seen)
    last = [msg for _, msg in seen[b] if msg.get("t") == "digest" and msg.get("beats")][-1]
    mesh.kill(a)
    killed_at, gone_at = mesh.now, None
    for _ in range(60):  # M tells B of A's last beat again and again, "just now"
        mesh.run(0.5)
        mesh.engines[b].receive(m, _dated_now(last), mesh.now)
        if gone_at is None and a not in mesh.engines[b].peers():
            gone_at = mesh.now
    assert gone_at is not None
    assert gone_at - killed_at <= DEFAULTS.relayed_dead_after_s + 2 * DEFAULTS.push_interval_s


def test_beats_a_member_held_back_buy_a_dead_node_no_more_time_than_they_cover() -> None:
    mesh, a, m, b = _line()
    mesh.withheld, mesh.holder = [], m
    mesh.run(3)  # M withholds its digests (A's signed beats) from B for 3 s ...
    mesh.kill(a)  # ... A dies ...
    held = [msg for _, dst, msg in mesh.withheld if dst == b]
    mesh.withheld = []  # from now on M sends B only what it held back
    killed_at, gone_at = mesh.now, None
    assert len(held) >= 4
    for msg in held + held:  # ... and releases what it held, one every 2 s, each dated "just now"
        mesh.run(2.0)
        mesh.engines[b].receive(m, _dated_now(msg), mesh.now)
        if gone_at is None and a not in mesh.engines[b].peers():
            gone_at = mesh.now
        assert gone_at is None or a not in mesh.engines[b].peers(), "the dead node came back"
    assert gone_at is not None
    assert gone_at - killed_at <= DEFAULTS.relayed_dead_after_s + 2 * DEFAULTS.push_interval_s


# ---- membership under a Sybil --------------------------------------------------------------------


def _fake(i: int) -> dict[str, Any]:
    """A node the insider invents, signed by a key it generated: valid in every way but real."""
    key = NodeIdentity.generate()
    record = NodeRecord(node_id=key.node_id, incarnation=1, addresses=(f"203.0.113.{i % 250}:9",))
    return {"r": GossipEngine(record, signer=key.sign).self_record.to_dict(), "age_ms": 0}


def _flood(mesh: Mesh, m: str, b: str, count: int) -> None:
    fakes = [_fake(i) for i in range(count)]
    for start in range(0, count, 16):
        mesh.engines[b].receive(m, {"t": "records", "records": fakes[start : start + 16]}, mesh.now)


def test_one_member_cannot_fill_the_table_and_lock_a_newcomer_out() -> None:
    mesh = Mesh()
    b, m = mesh.node(), mesh.node()
    mesh.link(b, m)
    _flood(mesh, m, b, 530)
    view = mesh.engines[b].peers()
    assert len(view) <= DEFAULTS.max_introduced_per_peer + 1  # its share, and M itself
    # An honest node joining afterwards, through another member: it enters the view.
    h, newcomer = mesh.node(), mesh.node()
    mesh.link(b, h)
    mesh.link(h, newcomer)
    mesh.run(3)
    assert newcomer in mesh.engines[b].peers() and h in mesh.engines[b].peers()


def test_a_linked_peer_takes_the_place_of_hearsay_in_a_full_table(caplog: pytest.LogCaptureFixture) -> None:
    mesh = Mesh(GossipConfig(max_nodes=8, max_introduced_per_peer=4))
    b, m1, m2 = mesh.node(), mesh.node(), mesh.node()
    mesh.link(b, m1)
    mesh.link(b, m2)
    with caplog.at_level(logging.WARNING, "mesh_llm.mesh.gossip"):
        _flood(mesh, m1, b, 40)
        _flood(mesh, m2, b, 40)
        mesh.run(0.5)
        _flood(mesh, m2, b, 40)  # two Sybils fill the table between them
    assert len(mesh.engines[b].peers()) == 8
    full = [r for r in caplog.records if "table is full" in r.getMessage()]
    assert len(full) <= 1  # logged once, not once per fake
    for _ in range(3):  # honest nodes that link to us always get in
        n = mesh.node()
        mesh.link(b, n)
        assert n in mesh.engines[b].peers()
    assert {m1, m2} <= set(mesh.engines[b].peers())
    assert len(mesh.engines[b].peers()) == 8


# ---- parsers of what members send are total -------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=80, deadline=None, database=None)
@given(
    st.sampled_from(["hb", "digest", "pull", "records", "bye"]),
    st.sampled_from(["inc", "ver", "hb", "up", "sig", "entries", "gone", "beats", "ask", "ids", "records"]),
    JSON,
)
def test_any_json_in_any_field_of_any_message_is_handled_or_malformed(
    kind: str, key: str, value: Any
) -> None:
    mesh, a, m, b = _line()
    good = {
        "hb": {"t": "hb", "inc": 1, "ver": 1, "hb": 99},
        "digest": {"t": "digest", "entries": [], "gone": [], "ask": False, "beats": []},
        "pull": {"t": "pull", "ids": [a]},
        "records": {"t": "records", "records": []},
        "bye": {"t": "bye", "inc": 0},
    }[kind]
    try:
        mesh.engines[b].receive(m, {**good, key: value}, mesh.now)
        mesh.engines[b].receive(m, {**good, key: [value, [a, 1, value, 0, 0, value]]}, mesh.now)
    except MalformedFrame:
        pass
    mesh.run(1)  # and the engine keeps working
    assert a in mesh.engines[b].peers()


def test_a_record_with_a_forged_heartbeat_does_not_make_a_live_node_look_dead() -> None:
    mesh, a, m, b = _line()
    record = mesh.engines[b].peers()[a].record
    inflated = replace(record, heartbeat=2**62)
    mesh.engines[b].receive(
        m, {"t": "records", "records": [{"r": inflated.to_dict(), "age_ms": 0}]}, mesh.now
    )
    mesh.run(30)
    assert a in mesh.engines[b].peers()
