"""Parsing what peers publish about split models: good entries are read, bad ones are skipped."""

from __future__ import annotations

from types import MappingProxyType

from mesh_llm.split import PeerClaim, peer_claims, peer_declined, peer_wants


def test_a_claim_is_read_with_its_shards_and_settledness() -> None:
    extra = MappingProxyType(
        {
            "splits": {
                "m": {
                    "epoch": 3,
                    "mode": "split",
                    "settled": True,
                    "state": "serving",
                    "force": False,
                    "n_layers": 30,
                    "shards": [["a", 0, 15], ["b", 15, 30]],
                }
            }
        }
    )
    assert peer_claims(extra) == {
        "m": PeerClaim("m", 3, "split", "serving", False, True, (("a", 0, 15), ("b", 15, 30)))
    }


def test_malformed_claims_are_skipped_and_the_rest_kept() -> None:
    extra = {
        "splits": {
            "bad-epoch": {"epoch": "soon", "shards": []},
            "bad-shards": {"epoch": 1, "shards": [["a", 0]]},
            "not-a-dict": [1, 2],
            "no-epoch": {"shards": []},
            "ok": {"epoch": 1},
        }
    }
    claims = peer_claims(extra)
    assert list(claims) == ["ok"]
    assert claims["ok"].mode == "waiting" and not claims["ok"].settled and claims["ok"].shards == ()
    assert peer_claims({"splits": "nope"}) == {} and peer_claims({}) == {}


def test_wants_and_declined_tolerate_junk() -> None:
    assert peer_wants({"wants": {"m": {"force": True}, "x": "junk"}}) == {"m": True}
    assert peer_wants({"wants": ["m"]}) == {}
    assert peer_declined({"declined": ["a", "b"]}) == frozenset({"a", "b"})
    assert peer_declined({"declined": "a"}) == frozenset() and peer_declined({}) == frozenset()
