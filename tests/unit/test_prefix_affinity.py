"""Prefix affinity, pure: the conversation digest, the memory of who served it, the choice among
hosts with the load rule, the routing table's view of it, and the gossip field's parser."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.api.prefix import ADVERTISED, DIGEST_HEX, PrefixMemory, prefix_digest
from mesh_llm.api.routing import AFFINITY_SLACK, Endpoint, choose
from mesh_llm.errors import MalformedFrame
from mesh_llm.mesh.gossip import ModelAd, NodeRecord, PeerStatus, PeerView
from mesh_llm.mesh.gossip._records import MAX_PREFIXES, PREFIX_CHARS, prefix_digests
from mesh_llm.node.routing import RoutingInputs, derive_table

SYSTEM = {"role": "system", "content": "You are an agent working in ~/project-a."}
TOOLS = [
    {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}},
]


def chat(*messages: dict[str, Any], tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": list(messages)}
    if tools is not None:
        body["tools"] = tools
    return body


def turns(opening: str) -> list[dict[str, Any]]:
    """Three turns of one conversation: each resends the last and extends it."""
    history = [SYSTEM, {"role": "user", "content": opening}]
    out = [chat(*history, tools=TOOLS)]
    for i in range(2):
        history = [
            *history,
            {"role": "assistant", "content": f"done {i}"},
            {"role": "user", "content": f"next {i}"},
        ]
        out.append(chat(*history, tools=TOOLS))
    return out


# ---- the digest ------------------------------------------------------------------------------


def test_every_turn_of_a_conversation_has_one_digest() -> None:
    digests = {prefix_digest(body) for body in turns("fix the tests")}
    assert len(digests) == 1
    (digest,) = digests
    assert digest is not None and len(digest) == DIGEST_HEX


def test_the_digest_is_the_same_on_every_node_whatever_the_key_order() -> None:
    body = turns("fix the tests")[1]
    # Another node receives the same body as JSON written with its keys in another order.
    reordered = json.loads(json.dumps(body, sort_keys=True))
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in reordered["messages"]]
    assert prefix_digest(reordered) == prefix_digest(copy.deepcopy(body))


def test_the_digest_function_is_pinned_so_nodes_of_different_versions_agree() -> None:
    opening = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert prefix_digest({"model": "any", "messages": opening}) == "da1a5e8bb3f1198a"


def test_conversations_differ_by_their_opening_system_prompt_or_tools() -> None:
    base = prefix_digest(turns("fix the tests")[0])
    assert prefix_digest(turns("write the docs")[0]) != base
    other_system = chat(
        {"role": "system", "content": "~/project-b"}, {"role": "user", "content": "fix the tests"}
    )
    assert prefix_digest(other_system) != prefix_digest(
        chat(SYSTEM, {"role": "user", "content": "fix the tests"})
    )
    assert prefix_digest(chat(SYSTEM, {"role": "user", "content": "x"}, tools=TOOLS)) != prefix_digest(
        chat(SYSTEM, {"role": "user", "content": "x"}, tools=TOOLS[:1])
    )


def test_tools_are_order_sensitive_as_the_prompt_they_render() -> None:
    opening = (SYSTEM, {"role": "user", "content": "x"})
    assert prefix_digest(chat(*opening, tools=TOOLS)) != prefix_digest(chat(*opening, tools=TOOLS[::-1]))
    assert prefix_digest(chat(*opening, tools=[])) == prefix_digest(chat(*opening))


def test_bodies_without_messages_have_no_digest() -> None:
    assert prefix_digest({"model": "m", "prompt": "Hi"}) is None
    assert prefix_digest({"model": "m", "messages": []}) is None
    assert prefix_digest({"model": "m", "messages": "not a list"}) is None


@given(st.dictionaries(st.text(max_size=5), st.recursive(st.none() | st.text(max_size=5), st.lists)))
def test_any_body_gives_a_digest_or_none(body: dict[str, Any]) -> None:
    digest = prefix_digest(body)
    assert digest is None or prefix_digests([digest]) == (digest,)


def test_digests_fit_the_gossip_field() -> None:
    assert (DIGEST_HEX, ADVERTISED) == (PREFIX_CHARS, MAX_PREFIXES)


# ---- the memory ------------------------------------------------------------------------------


def test_memory_keeps_the_newest_digests_per_host_and_one_host_per_digest() -> None:
    memory = PrefixMemory(limit=3)
    for d in "abcd":
        memory.record("m", "A", d * DIGEST_HEX)
    assert memory.held()[("m", "A")] == tuple(d * DIGEST_HEX for d in "dcb")
    memory.record("m", "B", "c" * DIGEST_HEX)  # the conversation's latest turn went to B
    assert memory.held() == {
        ("m", "A"): ("d" * DIGEST_HEX, "b" * DIGEST_HEX),
        ("m", "B"): ("c" * DIGEST_HEX,),
    }
    memory.record("other", "A", "c" * DIGEST_HEX)  # another model's hosts are another matter
    assert memory.held()[("m", "B")] == ("c" * DIGEST_HEX,)


# ---- the choice ------------------------------------------------------------------------------

D = "d" * DIGEST_HEX


def host(node: str, in_flight: int = 0, holds: bool = False, free_slots: int | None = None) -> Endpoint:
    return Endpoint(
        "m", node, True, in_flight, free_slots=free_slots, prefixes=frozenset({D} if holds else ())
    )


def test_the_host_holding_the_prefix_goes_first_whatever_the_rotation() -> None:
    hosts = [host("a"), host("b", holds=True), host("c")]
    for rotation in range(6):
        order = choose("m", hosts, rotation=rotation, prefix=D)
        assert order[0].node_id == "b"
        assert sorted(e.node_id for e in order) == ["a", "b", "c"]  # the rest stay, for failover


def test_without_a_prefix_or_a_holder_equal_loads_still_rotate() -> None:
    hosts = [host("a"), host("b")]
    assert {choose("m", hosts, rotation=r, prefix=D)[0].node_id for r in range(2)} == {"a", "b"}
    assert {choose("m", hosts, rotation=r)[0].node_id for r in range(2)} == {"a", "b"}


def test_the_holder_keeps_the_request_while_it_is_at_most_slack_busier() -> None:
    order = choose(
        "m", [host("a", in_flight=1), host("b", in_flight=1 + AFFINITY_SLACK, holds=True)], prefix=D
    )
    assert order[0].node_id == "b"


def test_load_wins_when_the_holder_is_much_busier() -> None:
    order = choose(
        "m", [host("a", in_flight=1), host("b", in_flight=2 + AFFINITY_SLACK, holds=True)], prefix=D
    )
    assert [e.node_id for e in order] == ["a", "b"]


def test_a_suspect_or_unready_holder_is_not_preferred() -> None:
    suspect = Endpoint("m", "b", True, prefixes=frozenset({D}), suspect=True)
    assert choose("m", [host("a", in_flight=1), suspect], prefix=D)[0].node_id == "a"
    down = Endpoint("m", "b", False, prefixes=frozenset({D}), state="restarting")
    assert [e.node_id for e in choose("m", [host("a"), down], prefix=D)] == ["a"]


# ---- the routing table -----------------------------------------------------------------------

ME, PEER, OTHER = "m" * 16, "p" * 16, "o" * 16


def view(node_id: str, prefixes: tuple[str, ...] = ()) -> PeerView:
    record = NodeRecord(node_id=node_id, incarnation=1, models=(ModelAd("m", True, prefixes=prefixes),))
    return PeerView(record, heartbeat=1, last_seen=1.0, connected=True, status=PeerStatus.ALIVE)


def held_by(table: Any) -> dict[str, frozenset[str]]:
    return {e.node_id: e.prefixes for e in table.endpoints}


def test_the_table_holds_what_hosts_advertise_and_what_this_node_sent_them() -> None:
    E = "e" * DIGEST_HEX
    table = derive_table(
        RoutingInputs(
            ME,
            now=1.0,
            local=(Endpoint("m", ME, True, local=True),),
            peers={PEER: view(PEER, (D,)), OTHER: view(OTHER)},
            prefixes={("m", OTHER): (E,), ("m", ME): ("f" * DIGEST_HEX,)},
        )
    )
    assert held_by(table) == {ME: {"f" * DIGEST_HEX}, PEER: {D}, OTHER: {E}}


def test_where_this_node_sent_the_latest_turn_beats_an_advertisement() -> None:
    inputs = RoutingInputs(
        ME, now=1.0, peers={PEER: view(PEER, (D,)), OTHER: view(OTHER)}, prefixes={("m", OTHER): (D,)}
    )
    assert held_by(derive_table(inputs)) == {PEER: frozenset(), OTHER: {D}}


def test_a_routed_turn_moves_the_conversation_at_once_without_deriving_again() -> None:
    table = derive_table(RoutingInputs(ME, now=1.0, peers={PEER: view(PEER, (D,)), OTHER: view(OTHER)}))
    moved = table.with_routed("m", OTHER, D)
    assert held_by(moved) == {PEER: frozenset(), OTHER: {D}}
    assert choose("m", moved.endpoints, prefix=D)[0].node_id == OTHER
    assert moved.with_routed("m", OTHER, D) == moved


# ---- the gossip field ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)
hex_digests = st.text("0123456789abcdef", min_size=PREFIX_CHARS, max_size=PREFIX_CHARS)


@given(json_values)
def test_the_prefixes_parser_is_total(value: object) -> None:
    try:
        parsed = prefix_digests(value)
    except MalformedFrame:
        return
    assert isinstance(parsed, tuple) and len(parsed) <= MAX_PREFIXES
    assert all(isinstance(p, str) and len(p) == PREFIX_CHARS for p in parsed)


@given(json_values)
def test_a_model_ad_with_any_prefixes_value_parses_or_is_malformed(value: object) -> None:
    try:
        ad = ModelAd.from_dict({"name": "m", "ready": True, "prefixes": value})
    except MalformedFrame:
        return
    assert ModelAd.from_dict(ad.to_dict()) == ad


@given(st.lists(hex_digests, max_size=MAX_PREFIXES))
def test_advertised_prefixes_round_trip_through_the_record(prefixes: list[str]) -> None:
    ad = ModelAd("m", True, prefixes=tuple(prefixes))
    record = NodeRecord(node_id=PEER, incarnation=1, models=(ad,))
    assert NodeRecord.from_dict(json.loads(json.dumps(record.to_dict()))).models == (ad,)


def test_too_many_or_ill_formed_prefixes_are_malformed() -> None:
    with pytest.raises(MalformedFrame):
        prefix_digests([D] * (MAX_PREFIXES + 1))
    for bad in (["D" * PREFIX_CHARS], ["d" * (PREFIX_CHARS - 1)], [1], "d" * PREFIX_CHARS, {"d": 1}):
        with pytest.raises(MalformedFrame):
            prefix_digests(bad)


def test_an_ad_without_prefixes_encodes_as_before() -> None:
    assert "prefixes" not in ModelAd("m", True).to_dict()
    assert ModelAd.from_dict({"name": "m", "ready": True}).prefixes == ()
