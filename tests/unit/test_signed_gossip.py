"""Gossip nobody can forge: records and goodbyes count only when signed by their own node.

Three engines with real ed25519 keys exchange messages in memory: an honest node A, its peer
B, and an insider M (a member with a valid token, so its links are authenticated) that relays
forged records and goodbyes about A.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.mesh.gossip import GossipEngine, NodeRecord, bye_signing_bytes
from mesh_llm.peer.identity import NodeIdentity


def _node(**fields: Any) -> tuple[NodeIdentity, GossipEngine]:
    key = NodeIdentity.generate()
    record = NodeRecord(node_id=key.node_id, incarnation=1, role="host", capacity_bytes=10**9, **fields)
    return key, GossipEngine(record, signer=key.sign, verifier=NodeIdentity.verify)


def _deliver(
    out: list[tuple[str, dict[str, Any]]], engines: dict[str, GossipEngine], sender: str, now: float
) -> None:
    """Deliver messages (and replies) until quiet; a bounded loop, as aioquic's tests do."""
    queue = [(sender, peer, msg) for peer, msg in out]
    for _ in range(1000):
        if not queue:
            return
        src, dst, msg = queue.pop(0)
        queue += [(dst, p, m) for p, m in engines[dst].receive(src, msg, now)]
    raise AssertionError("messages kept flowing")


def _link(engines: dict[str, GossipEngine], a: str, b: str, now: float) -> None:
    _deliver(engines[a].peer_connected(b, now), engines, a, now)
    _deliver(engines[b].peer_connected(a, now), engines, b, now)


def _mesh() -> tuple[dict[str, GossipEngine], str, str, str]:
    (ka, a), (kb, b), (km, m) = _node(), _node(), _node()
    engines = {ka.node_id: a, kb.node_id: b, km.node_id: m}
    _link(engines, ka.node_id, kb.node_id, 0.0)
    _link(engines, km.node_id, kb.node_id, 0.0)
    return engines, ka.node_id, kb.node_id, km.node_id


def test_signed_records_travel_through_relays() -> None:
    engines, a, _, m = _mesh()
    for t in range(1, 4):
        for node_id, engine in engines.items():
            _deliver(engine.tick(float(t)), engines, node_id, float(t))
    # M has no link to A but learns A's record through B, signature intact.
    assert a in engines[m].peers() and engines[m].peers()[a].record.role == "host"


def test_a_forged_record_relayed_by_an_insider_is_ignored() -> None:
    engines, a, b, m = _mesh()
    real = engines[b].peers()[a].record
    forged = replace(real, version=real.version + 5, capacity_bytes=10**15, role="worker")
    msg = {"t": "records", "records": [{"r": forged.to_dict(), "age_ms": 0}]}
    engines[b].receive(m, msg, 1.0)
    assert engines[b].peers()[a].record.capacity_bytes == 10**9  # unchanged
    # Stripping the signature does not help either.
    bare = {k: v for k, v in forged.to_dict().items() if k != "sig"}
    engines[b].receive(m, {"t": "records", "records": [{"r": bare, "age_ms": 0}]}, 1.0)
    assert engines[b].peers()[a].record.role == "host"


def test_a_forged_goodbye_for_a_live_node_is_ignored_and_a_real_one_relayed() -> None:
    engines, a, b, m = _mesh()
    inc = engines[b].peers()[a].record.incarnation
    fake = {"t": "digest", "entries": [], "gone": [[a, inc, 60_000, "00" * 64]], "ask": False}
    engines[b].receive(m, fake, 1.0)
    unsigned = {"t": "digest", "entries": [], "gone": [[a, inc, 60_000]], "ask": False}
    engines[b].receive(m, unsigned, 1.0)
    assert a in engines[b].peers()  # still there (a direct "bye" always means its sender leaves)
    # A really leaves: B buries it and relays the signed goodbye to M, which believes it.
    _deliver(engines[a].leave(2.0), engines, a, 2.0)
    assert a not in engines[b].peers()
    for t in (3.0, 4.0):
        _deliver(engines[b].tick(t), engines, b, t)
    assert a not in engines[m].peers()


def test_goodbye_signatures_bind_node_and_incarnation() -> None:
    key = NodeIdentity.generate()
    sig = key.sign(bye_signing_bytes(key.node_id, 7))
    assert NodeIdentity.verify(key.node_id, bye_signing_bytes(key.node_id, 7), sig)
    assert not NodeIdentity.verify(key.node_id, bye_signing_bytes(key.node_id, 8), sig)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["version", "role", "capacity_bytes", "sig", "node_id", "extra_field"]),
        st.none() | st.booleans() | st.integers(-5, 10**12) | st.text(max_size=130),
    )
)
def test_any_tampering_with_a_signed_record_is_refused_or_harmless(changes: dict[str, Any]) -> None:
    engines, a, b, m = _mesh()
    before = engines[b].peers()[a].record
    wire = {**before.to_dict(), **changes}
    try:
        engines[b].receive(m, {"t": "records", "records": [{"r": wire, "age_ms": 0}]}, 1.0)
    except Exception as exc:  # malformed frames are refused with MalformedFrame
        assert type(exc).__name__ == "MalformedFrame"
    after = engines[b].peers()[a].record
    assert after.unsigned_dict() == before.unsigned_dict() or after.signed_by_owner(NodeIdentity.verify)


def test_an_inflated_heartbeat_from_an_insider_cannot_get_a_live_node_declared_dead() -> None:
    engines, a, b, m = _mesh()  # A-B and M-B linked: B hears A directly, M only via B
    rec = engines[b].peers()[a].record
    inflate = {
        "t": "digest",
        "entries": [[a, rec.incarnation, rec.version, 2**63 - 1, 0]],
        "gone": [],
        "ask": False,
    }
    engines[b].receive(m, inflate, 0.5)  # once: later beats from A itself look old next to it
    for t in range(1, 21):  # 20 s of A's ordinary direct heartbeats
        now = float(t)
        for node_id in (a, b):
            _deliver(engines[node_id].tick(now), engines, node_id, now)
    assert a in engines[b].peers() and engines[b].peers()[a].status.value == "alive"
