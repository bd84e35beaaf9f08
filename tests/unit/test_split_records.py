"""Parsing what peers publish about split models: good entries are read, bad ones are skipped."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.planning.records import is_model_name, model_dir_name
from mesh_llm.split.claims import PeerClaim, parse_claim, peer_claims, peer_declined, peer_wants

A, B = "a" * 64, "b" * 64


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
                    "shards": [[A, 0, 15], [B, 15, 30]],
                }
            }
        }
    )
    assert peer_claims(extra) == {
        "m": PeerClaim("m", 3, "split", "serving", False, True, ((A, 0, 15), (B, 15, 30)))
    }


def test_malformed_claims_are_skipped_and_the_rest_kept() -> None:
    extra = {
        "splits": {
            "bad-epoch": {"epoch": "soon", "shards": []},
            "bad-shards": {"epoch": 1, "shards": [[A, 0]]},
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


def test_forged_claims_are_dropped_whole() -> None:
    forged = {
        "splits": {
            "/etc": {"epoch": 1},  # an absolute path as a model name
            "../../x": {"epoch": 1},
            "a/b": {"epoch": 1},
            "inf-epoch": {"epoch": float("inf")},  # the wire's JSON accepts Infinity
            "float-epoch": {"epoch": 1.5},
            "huge-epoch": {"epoch": 10**30},
            "bool-epoch": {"epoch": True},
            "short-id": {"epoch": 1, "shards": [["abc", 0, 30]]},
            "gap": {"epoch": 1, "shards": [[A, 0, 10], [B, 12, 30]]},
            "empty-range": {"epoch": 1, "shards": [[A, 0, 0]]},
            "bad-mode": {"epoch": 1, "mode": "rm -rf"},
            "long-state": {"epoch": 1, "state": "x" * 10_000},
            "str-force": {"epoch": 1, "force": "yes"},
            "fine": {"epoch": 2, "shards": [[A, 0, 10], [B, 10, 30]]},
        }
    }
    assert list(peer_claims(forged)) == ["fine"]


def test_wants_and_declines_drop_names_that_are_not_model_names() -> None:
    assert peer_wants({"wants": {"/etc": {"force": True}, "ok": {"force": "x"}}}) == {"ok": False}
    assert peer_declined({"declined": ["/tmp", "..", "Qwen2.5-3B", 7]}) == frozenset({"Qwen2.5-3B"})


def test_names_with_newlines_or_control_characters_are_not_model_names() -> None:
    for bad in ("abc\n", "a\nb", "a\x00", "a b", "", "-x", "a/b", "a\\b"):
        assert not is_model_name(bad), repr(bad)
    assert is_model_name("Qwen2.5-32B") and is_model_name("SmolLM2-135M")


def test_model_directories_are_hashes_of_the_name() -> None:
    assert model_dir_name("/etc") != "/etc" and "/" not in model_dir_name("../../etc")
    assert len(model_dir_name("m")) == 24 and model_dir_name("m") == model_dir_name("m")


@given(st.text(max_size=40))
def test_a_valid_model_name_is_never_a_path(name: str) -> None:
    if is_model_name(name):
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_as_a_claim_parses_or_raises_a_record_error(value: object) -> None:
    from mesh_llm.planning.records import RecordError

    try:
        parse_claim("m", value)
    except RecordError:
        pass
    assert isinstance(peer_claims({"splits": {"m": value}}), dict)


# ---- every parser of peer input is total (issue 25) ----------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
CLAIM_FIELDS = ("epoch", "mode", "state", "force", "settled", "n_layers", "shards")


def _good_claim() -> dict[str, object]:
    return {"epoch": 1, "mode": "split", "state": "", "force": False, "settled": True, "n_layers": 2,
            "shards": [[A, 0, 1], [B, 1, 2]]}  # fmt: skip


def test_an_unhashable_mode_in_a_signed_claim_is_dropped_not_raised() -> None:
    # The attacker's record: its own, validly signed, with `"mode": []`. Every reader of claims
    # (status, routing, the split manager) used to raise TypeError on it.
    from mesh_llm.split.claims import read_intents

    for mode in ([], {}, [1], {"a": 1}):
        extra = {"splits": {"m": {**_good_claim(), "mode": mode}, "ok": _good_claim()}}
        assert list(peer_claims(extra, A)) == ["ok"]
        assert list(read_intents(extra, A).claims) == ["ok"]


@given(st.sampled_from(CLAIM_FIELDS), JSON)
def test_any_json_in_any_claim_field_parses_or_raises_a_record_error(key: str, value: object) -> None:
    from mesh_llm.planning.records import RecordError

    try:
        parse_claim("m", {**_good_claim(), key: value})
    except RecordError:
        pass
    assert isinstance(peer_claims({"splits": {"m": {**_good_claim(), key: value}}}), dict)


@given(st.sampled_from(("splits", "wants", "declined")), JSON, JSON)
def test_any_json_in_wants_declines_and_splits_is_read_or_ignored(
    key: str, value: object, inner: object
) -> None:
    from mesh_llm.split.claims import read_intents

    for extra in ({key: value}, {key: {"m": value}}, {key: {"m": {"force": inner}}}, {key: [value, inner]}):
        intents = read_intents(extra, A)
        assert all(isinstance(m, str) for m in intents.wants) and all(
            isinstance(m, str) for m in intents.declined
        )
        assert all(isinstance(c.mode, str) for c in intents.claims.values())
    assert isinstance(peer_wants({"wants": value}), dict) and isinstance(
        peer_declined({"declined": value}), frozenset
    )


def test_warnings_about_bad_claims_are_bounded_on_their_owner() -> None:
    import logging

    from mesh_llm.log_limits import WarnOnce
    from mesh_llm.split.claims import read_intents

    notices = WarnOnce(logging.getLogger("test"), "claims", max_keys=100)
    for i in range(5000):  # a member sending a new bad name every time
        read_intents({"splits": {f"m{i}": {"mode": []}}}, A, notices)
    assert len(notices) == 100
