"""Mesh listings: the format, the checks that make a listing ignored, scoring and convergence (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh_llm.config import build_config
from mesh_llm.discovery import (
    DiscoveryTiming,
    Found,
    Listing,
    Preferences,
    pick_model,
    rank,
    score,
    should_move,
)
from mesh_llm.discovery._listing import by_mesh, latest_per_publisher, listing_from_event, matches
from mesh_llm.errors import ConfigError, ListingError
from mesh_llm.peer.token import new_mesh

NOW = 1_800_000_000.0
PUB = "ab" * 32


def listing(**fields: Any) -> Listing:
    token = new_mesh().invite("cd" * 32, ["127.0.0.1:4000"])
    return Listing(invite_token=token.encode(), mesh_id=token.mesh_id.hex(), **fields)


def event(
    content: str, *, created: int = int(NOW) - 5, expires: int | None = int(NOW) + 115, **extra: Any
) -> dict[str, Any]:
    tags = [["d", "mesh-llm"], ["k", "mesh-llm"]] + (
        [["expiration", str(expires)]] if expires is not None else []
    )
    return {"kind": 31990, "pubkey": PUB, "created_at": created, "tags": tags, "content": content, **extra}


def found(li: Listing, *, source: str = "nostr", publisher: str = PUB, at: int = int(NOW)) -> Found:
    return Found(li, publisher, at, at + 120, source, "ws://relay")


def test_a_listing_round_trips_with_upstreams_field_names() -> None:
    li = listing(
        serving=("SmolLM2-135M",), node_count=3, client_count=1, max_clients=5, name="Lab", region="eu"
    )
    data = json.loads(li.to_json())
    assert {"invite_token", "serving", "wanted", "on_disk", "total_vram_bytes", "node_count", "client_count",
            "max_clients", "name", "region", "mesh_id"} <= set(data)  # fmt: skip
    assert Listing.from_json(li.to_json()) == li
    f = listing_from_event(event(li.to_json()), signature_ok=True, now=NOW, source="lan", where="x")
    assert f.listing == li and f.publisher == PUB and f.expires_at == int(NOW) + 115


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"signature_ok": False}, "signature"),
        ({"expires": int(NOW) - 1}, "expired"),
        ({"expires": None}, "no expiration"),
        ({"expires": int(NOW) + 86_400}, "longer"),
        ({"created": int(NOW) + 3600}, "future"),
    ],
)
def test_unsigned_expired_or_lying_events_are_refused(change: dict[str, Any], why: str) -> None:
    ok = change.pop("signature_ok", True)
    with pytest.raises(ListingError, match=why):
        listing_from_event(
            event(listing().to_json(), **change), signature_ok=ok, now=NOW, source="nostr", where="r"
        )


def test_a_listing_whose_token_does_not_decode_is_refused() -> None:
    bad = json.loads(listing().to_json()) | {"invite_token": "AQCN-not-a-token"}
    with pytest.raises(ListingError, match="token does not decode"):
        Listing.from_json(json.dumps(bad))
    other = listing()
    liar = json.loads(listing().to_json()) | {"mesh_id": other.mesh_id}
    with pytest.raises(ListingError, match="mesh id"):
        Listing.from_json(json.dumps(liar))


@pytest.mark.parametrize(
    "patch",
    [
        {"node_count": -1},
        {"node_count": True},
        {"serving": "x"},
        {"serving": ["a\nb"]},
        {"name": ""},
        {"serving": ["m"] * 65},
        {"name": "x" * 200},
    ],
)
def test_malformed_fields_are_refused(patch: dict[str, Any]) -> None:
    with pytest.raises(ListingError):
        Listing.from_json(json.dumps(json.loads(listing().to_json()) | patch))


def test_other_kinds_and_tags_are_refused() -> None:
    li = listing().to_json()
    with pytest.raises(ListingError, match="kind"):
        listing_from_event(event(li) | {"kind": 1}, signature_ok=True, now=NOW, source="nostr", where="r")
    with pytest.raises(ListingError, match="d/k"):
        listing_from_event(event(li) | {"tags": [["d", "other"], ["expiration", str(int(NOW) + 9)]]},
                           signature_ok=True, now=NOW, source="nostr", where="r")  # fmt: skip
    with pytest.raises(ListingError, match="not JSON"):
        listing_from_event(event("{oops"), signature_ok=True, now=NOW, source="nostr", where="r")


def test_the_last_mesh_joined_comes_first_then_size_and_models() -> None:
    small, big, last = listing(node_count=1), listing(node_count=5, serving=("a", "b")), listing(node_count=1)
    ranked = rank([found(small), found(big), found(last)], Preferences(last_mesh_id=last.mesh_id))
    assert [f.listing for f in ranked] == [last, big, small]


def test_full_meshes_are_skipped_and_headroom_counts() -> None:
    full = listing(max_clients=2, client_count=2)
    roomy = listing(max_clients=30, client_count=0)
    capped = listing(max_clients=3, client_count=2)
    assert score(full, Preferences()) is None
    assert score(roomy, Preferences()) > score(capped, Preferences())  # type: ignore[operator]
    assert [f.listing for f in rank([found(full), found(capped)], Preferences(client=True))] == [capped]


def test_region_wanted_models_and_names() -> None:
    eu, us = listing(region="EU"), listing(region="us")
    assert score(eu, Preferences(region="eu")) > score(us, Preferences(region="eu"))  # type: ignore[operator]
    wanted = listing(wanted=("big",))
    assert score(wanted, Preferences()) > score(listing(), Preferences())  # type: ignore[operator]
    assert score(wanted, Preferences(client=True)) < score(listing(serving=("x",)), Preferences(client=True))  # type: ignore[operator]
    private = listing(name="bobs-lab")
    assert rank([found(private)], Preferences()) == []  # someone's private group is not auto-joined
    assert [f.listing for f in rank([found(private)], Preferences(mesh_name="BOBS-LAB"))] == [private]
    assert rank([found(private)], Preferences(mesh_name="bobs-la")) == []  # exact match only
    assert rank([found(private)], Preferences(mesh_name="bobs-lab", own_mesh_id=private.mesh_id)) == []


def test_lan_listings_win_ties() -> None:
    a = listing()
    assert rank([found(a), found(a, source="lan", publisher="ef" * 32)], Preferences())[0].source == "lan"


def test_of_two_same_sized_meshes_exactly_one_moves() -> None:
    a, b = listing(node_count=1), listing(node_count=1)
    assert should_move(a.mesh_id, 1, b) != should_move(b.mesh_id, 1, a)
    big = listing(node_count=3)
    assert should_move(a.mesh_id, 1, big) and not should_move(big.mesh_id, 3, a)
    assert not should_move(a.mesh_id, 1, a)
    assert not should_move(a.mesh_id, 1, listing(node_count=9, max_clients=1, client_count=1))


def test_one_row_per_publisher_and_per_mesh() -> None:
    a = listing(node_count=2)
    old, new = found(a, at=int(NOW) - 60), found(a, at=int(NOW))
    assert latest_per_publisher([old, new]) == [new]
    other_pub = found(a, publisher="ef" * 32)
    rows = by_mesh([new, other_pub, found(listing(node_count=5), publisher="12" * 32)])
    assert [(r.listing.node_count, n) for r, n in rows] == [(5, 1), (2, 2)]


def test_discover_filters_by_model_and_region() -> None:
    li = listing(serving=("Qwen2.5-7B",), on_disk=("SmolLM2-135M",), region="EU")
    assert matches(li, model="qwen") and matches(li, model="smol") and not matches(li, model="llama")
    assert matches(li, region="eu") and not matches(li, region="us")


def test_own_mesh_model_is_the_largest_that_fits_preferring_disk() -> None:
    catalog = [("tiny", 100), ("mid", 1000), ("big", 10_000)]
    assert pick_model(catalog, 5000, {"tiny"}, allow_download=True, fit_factor=1.1) == "tiny"
    assert pick_model(catalog, 5000, set(), allow_download=True, fit_factor=1.1) == "mid"
    assert pick_model(catalog, 5000, set(), allow_download=False, fit_factor=1.1) is None
    assert pick_model(catalog, 50, {"tiny"}, allow_download=True, fit_factor=1.1) is None


def test_discovery_flags_become_a_frozen_config() -> None:
    c = build_config(mesh_name=" Lab ", max_clients=3, region="eu", nostr_relays=["ws://127.0.0.1:7000"])
    d = c.discovery
    assert d.publish and d.finds and d.mesh_name == "Lab" and d.relays == ("ws://127.0.0.1:7000",)
    assert not c.idle
    assert build_config(client=True, auto=True).discovery.finds
    assert not build_config(client=True, mesh_name="x").discovery.publish  # clients never publish
    t = DiscoveryTiming().with_overrides("publish_interval=2,alone=5")
    assert (t.publish_interval_s, t.alone_s, t.ttl_s) == (2.0, 5.0, 120.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"client": True}, "--auto"),
        ({"auto": True, "join": ["x"]}, "not both"),
        ({"client": True, "auto": True, "publish": True}, "do not publish"),
        ({"max_clients": 2}, "--publish"),
        ({"publish": True, "max_clients": 0}, "at least 1"),
        ({"publish": True, "nostr_relays": ["http://relay"]}, "ws"),
        ({"mesh_name": "a\tb"}, "printable"),
    ],
)
def test_bad_discovery_flags_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(**kwargs)


def test_bad_timing_override_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="publish_interval"):
        DiscoveryTiming().with_overrides("publish=2")
