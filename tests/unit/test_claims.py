"""What a node publishes about split models reads back the same on every peer (pure)."""

from __future__ import annotations

from mesh_llm.split.claims import PeerClaim, PeerIntents, intents_record, read_intents

A, B = "a" * 64, "b" * 64


def test_published_claims_wants_and_declines_read_back_unchanged() -> None:
    claim = PeerClaim("Big", 4, "split", "serving", True, True, ((A, 0, 10), (B, 10, 32)), n_layers=32)
    extra = intents_record([claim], {"Huge": True, "Other": False}, {"Dropped", "Also"})
    assert read_intents(extra, A) == PeerIntents(
        {"Big": claim}, {"Huge": True, "Other": False}, frozenset({"Dropped", "Also"})
    )
    assert extra["declined"] == ["Also", "Dropped"]  # sorted: the record is the same on every pass


def test_a_claim_record_has_the_fields_older_nodes_read() -> None:
    record = PeerClaim("M", 1, "waiting", "planning", False, False, (), n_layers=8).to_record()
    assert record == {
        "epoch": 1, "mode": "waiting", "settled": False, "state": "planning", "force": False,
        "n_layers": 8, "shards": [],
    }  # fmt: skip


def test_a_record_without_split_fields_has_no_intents() -> None:
    assert read_intents({}) == PeerIntents()
    assert read_intents(None) == PeerIntents()


def test_one_malformed_claim_does_not_hide_the_peers_wants_or_declines() -> None:
    extra = {"splits": {"bad": {"epoch": "x"}}, "wants": {"W": {"force": False}}, "declined": ["D"]}
    intents = read_intents(extra, B)
    assert intents.claims == {} and intents.wants == {"W": False} and intents.declined == {"D"}
