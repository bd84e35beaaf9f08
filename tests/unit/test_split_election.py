"""Who coordinates a split model, and which layers a node holds, from snapshots (no processes)."""

from __future__ import annotations

import itertools

from mesh_llm.split._election import (
    DutyAssignment,
    Known,
    Member,
    MeshView,
    OwnHost,
    duty_changes,
    elect,
    elected,
    wanted_duties,
)
from mesh_llm.split.claims import PeerClaim

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64
GB = 1 << 30


def claim(model: str, epoch: int = 1, *, settled: bool = True, shards: tuple = ()) -> PeerClaim:
    return PeerClaim(model, epoch, "split" if shards else "waiting", "", False, settled, shards)


def view(me: str = A, capacity: int = 8 * GB, peers: list[Member] | None = None, **kw: object) -> MeshView:
    return MeshView(me, capacity, peers={m.node_id: m for m in peers or []}, **kw)  # type: ignore[arg-type]


def test_the_node_with_the_file_and_the_most_capacity_is_elected() -> None:
    peers = [Member(B, 16 * GB, frozenset({"M"})), Member(C, 32 * GB), Member(D, 16 * GB, frozenset({"M"}))]
    assert elected(view(peers=peers, copies=frozenset({"M"})), "M") == B  # C has no copy; B < D
    assert elected(view(peers=peers), "Unknown") is None


def test_every_node_elects_the_same_host_whatever_order_it_sees_the_mesh_in() -> None:
    members = {
        A: Member(A, 8 * GB, frozenset({"M"})),
        B: Member(B, 16 * GB, frozenset({"M"})),
        C: Member(C, 16 * GB, frozenset({"M"})),
    }
    results = set()
    for me in members:
        others = [m for n, m in members.items() if n != me]
        for order in itertools.permutations(others):
            v = view(me, members[me].capacity_bytes, list(order), copies=frozenset({"M"}))
            results.add(elected(v, "M"))
    assert results == {B}


def test_a_settled_host_keeps_its_model_when_a_bigger_node_joins() -> None:
    peers = [
        Member(B, 8 * GB, frozenset({"M"}), claims={"M": claim("M")}),
        Member(C, 64 * GB, frozenset({"M"})),
    ]
    assert elected(view(peers=peers), "M") == B


def test_a_dropped_model_is_not_elected_to_the_node_that_declined_it() -> None:
    peers = [Member(B, 64 * GB, frozenset({"M"}), declined=frozenset({"M"}))]
    assert elected(view(peers=peers, copies=frozenset({"M"})), "M") == A


def test_a_wanted_model_is_taken_by_its_elected_host_after_the_join_grace() -> None:
    v = view(
        capacity=32 * GB,
        peers=[Member(B, 8 * GB, frozenset({"M"}), wants={"M": True})],
        copies=frozenset({"M"}),
    )
    early = elect(v, {}, 1.0, remember_s=600, may_take=False)
    assert early.take == () and early.known == {"M": Known(True, 0, 1.0)}  # remembered, not taken yet
    later = elect(v, early.known, 4.0, remember_s=600, may_take=True)
    assert later.take == (("M", Known(True, 0, 4.0)),)


def test_when_the_host_is_gone_the_next_largest_node_takes_over_after_the_last_epoch() -> None:
    host = Member(B, 64 * GB, frozenset({"M"}), claims={"M": claim("M", epoch=7)})
    with_host = view(peers=[host, Member(C, 8 * GB, frozenset({"M"}))], copies=frozenset({"M"}))
    first = elect(with_host, {}, 10.0, remember_s=600, may_take=True)
    assert first.take == () and first.known["M"].epoch == 7
    without = view(peers=[Member(C, 8 * GB, frozenset({"M"}))], copies=frozenset({"M"}))
    after = elect(without, first.known, 11.0, remember_s=600, may_take=True)
    assert after.take == (("M", Known(False, 7, 10.0)),)  # A (8 GB, smaller id than C) succeeds


def test_a_model_unseen_for_longer_than_the_memory_is_forgotten() -> None:
    v = view(copies=frozenset({"M"}))
    out = elect(v, {"M": Known(False, 3, 0.0)}, 601.0, remember_s=600, may_take=True)
    assert out.known == {} and out.take == ()


def test_a_host_hands_back_an_unsettled_model_to_a_better_placed_node() -> None:
    v = view(
        peers=[Member(B, 64 * GB, frozenset({"M"}))],
        copies=frozenset({"M"}),
        hosts={"M": OwnHost(False, 2, settled=False)},
    )
    assert elect(v, {}, 5.0, remember_s=600, may_take=True).hand_back == (("M", B),)
    settled = view(
        peers=[Member(B, 64 * GB, frozenset({"M"}))],
        copies=frozenset({"M"}),
        hosts={"M": OwnHost(False, 2, settled=True)},
    )
    assert elect(settled, {}, 5.0, remember_s=600, may_take=True).hand_back == ()


def test_a_worker_takes_layers_only_from_the_host_it_elects_itself() -> None:
    shards = ((B, 0, 10), (A, 10, 20))
    good = Member(B, 16 * GB, frozenset({"M"}), claims={"M": claim("M", 3, shards=shards)})
    wanted, refused = wanted_duties(view(peers=[good]), max_duties=4)
    assert wanted == {"M": DutyAssignment(B, 3, (10, 20))} and refused == []
    # C claims the model too, unsettled, though B's settled claim wins: C's plan is refused.
    rogue = Member(
        C,
        64 * GB,
        frozenset({"M"}),
        claims={"M": claim("M", 1, settled=False, shards=((C, 0, 5), (A, 5, 20)))},
    )
    wanted, refused = wanted_duties(view(peers=[good, rogue]), max_duties=4)
    assert wanted == {"M": DutyAssignment(B, 3, (10, 20))}
    assert [(r.peer, r.model) for r in refused] == [(C, "M")]


def test_a_worker_holds_layers_for_at_most_max_duties_models() -> None:
    claims = {m: claim(m, shards=((B, 0, 1), (A, 1, 2))) for m in ("M1", "M2", "M3")}
    host = Member(B, 16 * GB, frozenset(claims), claims=claims)
    wanted, refused = wanted_duties(view(peers=[host]), max_duties=2)
    assert sorted(wanted) == ["M1", "M2"] and [r.model for r in refused] == ["M3"]


def test_a_client_never_holds_layers() -> None:
    host = Member(B, 16 * GB, frozenset({"M"}), claims={"M": claim("M", shards=((B, 0, 1), (A, 1, 2)))})
    assert wanted_duties(view(peers=[host], client=True), max_duties=4) == ({}, [])


def test_a_new_epoch_restarts_the_duty_and_a_vanished_plan_stops_it() -> None:
    old = {"M": DutyAssignment(B, 1, (10, 20)), "N": DutyAssignment(B, 1, (0, 5))}
    stop, start = duty_changes(old, {"M": DutyAssignment(B, 2, (10, 20)), "O": DutyAssignment(C, 1, (3, 4))})
    assert stop == ["M", "N"]
    assert start == [("M", DutyAssignment(B, 2, (10, 20))), ("O", DutyAssignment(C, 1, (3, 4)))]
    assert duty_changes(old, old) == ([], [])


def test_a_peer_record_becomes_a_member_with_its_intents_and_ready_workers() -> None:
    from mesh_llm.mesh.gossip import ModelAd, NodeRecord, PeerStatus, PeerView
    from mesh_llm.split._manager import member
    from mesh_llm.split.claims import intents_record

    record = NodeRecord(
        node_id=B, incarnation=1, software="0.1.0", capacity_bytes=16 * GB, on_disk=("M",),
        models=(
            ModelAd("M", True, "worker", layers=(5, 10), extra={"epoch": 2, "host": A}),
            ModelAd("N", False, "worker", layers=(0, 3), extra={"epoch": 1, "host": A}),  # not ready
            ModelAd("O", True, "worker", extra={"epoch": "x", "host": A}),  # malformed: ignored
        ),
        extra=intents_record([claim("K", 4, shards=((B, 0, 8),))], {"W": True}, ["M"]),
    )  # fmt: skip
    m = member(B, PeerView(record, 1, 0.0, True, PeerStatus.ALIVE), 4.5)
    assert m.ready_workers == {("M", A, 2)} and m.rtt_min_ms == 4.5 and m.connected
    assert list(m.claims) == ["K"] and m.wants == {"W": True} and m.declined == {"M"}
    assert not m.has_copy("M")  # on disk, but declined there
