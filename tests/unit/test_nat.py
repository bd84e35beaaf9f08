"""NAT traversal's pure parts (issue 26): the traversal messages and their total parsers, what
peers observe of our listening socket and the NAT kind it shows, the address-probe bookkeeping
(driven through a stub transport, no sockets), the helpers of `Traversal`, and the record fields
that carry observed addresses and the NAT's kind."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import FrozenInstanceError
from types import MappingProxyType
from typing import Any, cast

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mesh_llm.errors import MalformedFrame
from mesh_llm.mesh.gossip import NodeRecord, record_signing_bytes
from mesh_llm.mesh.gossip._fields import MAX_ADDRESSES as RECORD_MAX_ADDRESSES
from mesh_llm.mesh.nat import MESSAGE_KINDS, NatTimings
from mesh_llm.mesh.nat._messages import (
    KINDS,
    MAX_ADDRESSES,
    MAX_WHY,
    NatMessage,
    encode,
    ip_address_text,
    parse,
)
from mesh_llm.mesh.nat._observed import (
    MAX_OBSERVED,
    MAX_OBSERVERS,
    NAT_EIM,
    NAT_NONE,
    NAT_SYMMETRIC,
    NAT_UNKNOWN,
    NatView,
    Observations,
    classify,
)
from mesh_llm.mesh.nat._probes import AddressProbes
from mesh_llm.mesh.nat._traversal import PUNCH_PAYLOAD, _Rate, _unique
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import parse_address

A, B, C = "a" * 64, "b" * 64, "c" * 64
NONCE = "0123456789abcdef" * 2
FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
NAT_KINDS = {NAT_NONE, NAT_EIM, NAT_SYMMETRIC, NAT_UNKNOWN}


# ---- addresses: literal IP and port, nothing else ------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("1.2.3.4:5", "1.2.3.4:5"),
        ("203.0.113.7:65535", "203.0.113.7:65535"),
        ("1.2.3.4:00080", "1.2.3.4:80"),
        ("[2001:db8::1]:443", "[2001:db8::1]:443"),
        ("[2001:0DB8:0::1]:443", "[2001:db8::1]:443"),
        ("[::ffff:1.2.3.4]:9", "1.2.3.4:9"),  # an IPv4-mapped IPv6 address is the IPv4 one
        ("[::1]:9000", "[::1]:9000"),
        ("127.0.0.1:1", "127.0.0.1:1"),
    ],
)
def test_literal_addresses_are_accepted_and_normalised(text: str, normal: str) -> None:
    assert ip_address_text(text, "a") == normal


@pytest.mark.parametrize(
    "text",
    [
        "example.com:80",  # a name: nothing a peer sends makes us look one up
        "localhost:80",
        "1.2.3.4",  # no port
        "1.2.3.4:",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:123456",
        "1.2.3.4:-1",
        "1.2.3.4:+80",
        "1.2.3.4: 80",
        " 1.2.3.4:80",
        "0.0.0.0:80",  # unspecified
        "[::]:80",
        "[::ffff:0.0.0.0]:80",
        "224.0.0.1:80",  # multicast
        "[ff02::1]:80",
        "255.255.255.255:80",  # broadcast
        "[::ffff:255.255.255.255]:80",
        "1.2.3.4:²",  # a digit to str.isdigit, not to int()
        "1.2.3.4:\u0665",  # an Arabic-Indic five: not a literal port
        "2001:db8::1:80",  # IPv6 without brackets: which colon starts the port?
        "[fe80::1%eth0]:80",  # a scope id is an interface name
        "[fe80::1%]x]:80",
        "[1.2.3.4:80",
        "1.2.3.4:80" + " " * 60,
        "",
    ],
)
def test_anything_but_a_dialable_literal_address_is_malformed(text: str) -> None:
    with pytest.raises(MalformedFrame):
        ip_address_text(text, "a")


@pytest.mark.parametrize("value", [None, 80, 1.5, True, [], {}, ["1.2.3.4:5"], b"1.2.3.4:5"])
def test_an_address_that_is_not_text_is_malformed(value: object) -> None:
    with pytest.raises(MalformedFrame):
        ip_address_text(value, "a")


_PORT_TEXT = st.integers(0, 70000).map(str) | st.text(
    st.characters(categories=["Nd", "No"]) | st.sampled_from("0123456789+- "), min_size=1, max_size=6
)
_HOST = (
    st.ip_addresses().map(str)
    | st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
    | st.ip_addresses(v=4).map(lambda ip: f"[::ffff:{ip}]")
    | st.builds(lambda ip, scope: f"[{ip}%{scope}]", st.ip_addresses(v=6), st.text(min_size=1, max_size=4))
    | st.text(max_size=12)
)


@FUZZ
@given(st.one_of(st.builds(lambda h, p: f"{h}:{p}", _HOST, _PORT_TEXT), st.text(max_size=70)))
@example("1.2.3.4:²")
@example("[fe80::1%]x]:5")
def test_an_accepted_address_is_a_dialable_literal_and_normal(text: str) -> None:
    try:
        out = ip_address_text(text, "a")
    except MalformedFrame:
        return
    assert ip_address_text(out, "a") == out
    host, port = parse_address(out)  # what the transport dials with
    ip = ipaddress.ip_address(host)
    assert 0 < port < 65536 and not ip.is_unspecified and not ip.is_multicast
    assert str(ip) == host and "%" not in out


# ---- traversal messages: total parsers, and encode reads back --------------------------------


def test_the_public_kinds_are_the_parsers_kinds() -> None:
    assert MESSAGE_KINDS == KINDS == {"addr_probe", "addr_seen", "punch_ask", "punch", "punch_go", "punch_no"}


def test_each_kind_parses_to_its_typed_message() -> None:
    assert parse({"t": "addr_probe", "n": NONCE}) == NatMessage("addr_probe", nonce=NONCE)
    assert parse({"t": "addr_seen", "n": NONCE, "a": "[::ffff:1.2.3.4]:7"}) == NatMessage(
        "addr_seen", nonce=NONCE, addresses=("1.2.3.4:7",)
    )
    ask = {"t": "punch_ask", "to": B, "a": ["1.2.3.4:7", "1.2.3.4:7", "[::1]:8"]}
    assert parse(ask) == NatMessage("punch_ask", peer=B, addresses=("1.2.3.4:7", "[::1]:8"))
    assert parse({"t": "punch", "from": A, "a": []}) == NatMessage("punch", peer=A)
    assert parse({"t": "punch_go", "to": C, "a": ["5.6.7.8:9"]}).addresses == ("5.6.7.8:9",)
    assert parse({"t": "punch_no", "to": C, "why": "x" * 1000}) == NatMessage(
        "punch_no", peer=C, why="x" * MAX_WHY
    )
    assert parse({"t": "punch_no", "to": C}).why == ""


@pytest.mark.parametrize(
    "msg",
    [
        None,
        [],
        "addr_probe",
        {},
        {"t": "hello"},
        {"t": []},  # unhashable: must not reach a set lookup
        {"t": {}},
        {"t": None, "n": NONCE},
        {"t": "addr_probe"},
        {"t": "addr_probe", "n": NONCE.upper()},
        {"t": "addr_probe", "n": NONCE[:-1]},
        {"t": "addr_probe", "n": 12},
        {"t": "addr_seen", "n": NONCE},
        {"t": "addr_seen", "n": NONCE, "a": ["1.2.3.4:5"]},
        {"t": "addr_seen", "n": NONCE, "a": "evil.example:5"},
        {"t": "punch_ask", "to": "B", "a": []},
        {"t": "punch_ask", "to": B},
        {"t": "punch_ask", "to": B, "a": ["1.2.3.4:5"] * (MAX_ADDRESSES + 1)},
        {"t": "punch_ask", "to": B, "a": ["1.2.3.4:5", 7]},
        {"t": "punch", "to": A, "a": []},  # a punch names who it is from
        {"t": "punch_go", "to": C.upper(), "a": []},
        {"t": "punch_no", "to": C, "why": 3},
    ],
)
def test_malformed_messages_raise_malformed_frame(msg: object) -> None:
    with pytest.raises(MalformedFrame):
        parse(msg)


def _parses_or_is_malformed(msg: object) -> None:
    try:
        message = parse(msg)
    except MalformedFrame:
        return
    assert message.kind in KINDS
    assert all(ip_address_text(a, "a") == a for a in message.addresses)
    assert len(message.addresses) <= MAX_ADDRESSES and len(message.why) <= MAX_WHY


@FUZZ
@given(JSON)
def test_any_json_value_as_a_message_parses_or_is_malformed(msg: object) -> None:
    _parses_or_is_malformed(msg)


@FUZZ
@given(st.dictionaries(st.sampled_from(["t", "n", "a", "to", "from", "why"]), JSON))
@example({"t": ["addr_probe"]})
def test_any_json_in_any_message_field_parses_or_is_malformed(msg: dict[str, Any]) -> None:
    _parses_or_is_malformed(msg)


_GOOD: dict[str, dict[str, Any]] = {
    "addr_probe": {"t": "addr_probe", "n": NONCE},
    "addr_seen": {"t": "addr_seen", "n": NONCE, "a": "1.2.3.4:5"},
    "punch_ask": {"t": "punch_ask", "to": B, "a": ["1.2.3.4:5"]},
    "punch": {"t": "punch", "from": A, "a": ["[2001:db8::2]:6"]},
    "punch_go": {"t": "punch_go", "to": C, "a": []},
    "punch_no": {"t": "punch_no", "to": C, "why": "no link"},
}


@FUZZ
@given(st.sampled_from(sorted(KINDS)), st.sampled_from(["t", "n", "a", "to", "from", "why"]), JSON)
@example("addr_seen", "a", "1.2.3.4:²")
@example("punch_ask", "a", ["1.2.3.4:¹"])
def test_any_json_in_one_field_of_a_good_message_parses_or_is_malformed(
    kind: str, key: str, value: object
) -> None:
    _parses_or_is_malformed({**_GOOD[kind], key: value})


_ADDRESS = st.builds(
    lambda ip, port: f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}",
    st.ip_addresses().filter(
        lambda ip: not (ip.is_unspecified or ip.is_multicast or str(ip).endswith("255.255.255.255"))
    ),
    st.integers(1, 65535),
)
_WIRE = st.one_of(
    st.builds(lambda n: {"t": "addr_probe", "n": n}, st.binary(min_size=16, max_size=16).map(bytes.hex)),
    st.builds(
        lambda n, a: {"t": "addr_seen", "n": n, "a": a},
        st.binary(min_size=16, max_size=16).map(bytes.hex),
        _ADDRESS,
    ),
    st.builds(
        lambda t, k, p, a: {"t": t, k: p, "a": a},
        st.sampled_from(["punch_ask", "punch_go"]),
        st.just("to"),
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.lists(_ADDRESS, max_size=MAX_ADDRESSES),
    ),
    st.builds(
        lambda p, a: {"t": "punch", "from": p, "a": a},
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.lists(_ADDRESS, max_size=MAX_ADDRESSES),
    ),
    st.builds(
        lambda p, why: {"t": "punch_no", "to": p, "why": why},
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.text(max_size=300),
    ),
)


@FUZZ
@given(_WIRE)
def test_a_well_formed_message_is_read_and_encodes_to_what_parses_back_the_same(wire: dict[str, Any]) -> None:
    message = parse(wire)
    assert message.kind == wire["t"]
    again = encode(message)
    assert json.loads(json.dumps(again)) == again  # plain JSON
    assert parse(again) == message


# ---- what peers observe, and the NAT's kind ---------------------------------------------------

LOCAL = ("192.168.1.10:9337", "127.0.0.1:9337")


def test_no_reports_say_nothing_of_the_nat() -> None:
    view = classify(LOCAL, {})
    assert view == NatView(NAT_UNKNOWN, tuple((a, "local") for a in LOCAL))
    assert view.observed == ()


def test_peers_that_see_one_of_our_own_addresses_mean_no_nat() -> None:
    view = classify(LOCAL, {A: "192.168.1.10:9337", B: "192.168.1.10:50000", C: "127.0.0.1:9337"})
    assert view.nat == NAT_NONE and view.observed == ()
    assert view.addresses == tuple((a, "local") for a in LOCAL)


def test_an_ipv4_mapped_local_address_is_our_own_address() -> None:
    assert classify(("[::ffff:192.168.1.10]:9337",), {A: "192.168.1.10:9337"}).nat == NAT_NONE


def test_one_peers_report_is_observed_but_shows_no_kind() -> None:
    view = classify(LOCAL, {A: "203.0.113.7:40000"})
    assert view.nat == NAT_UNKNOWN
    assert view.addresses[0] == ("203.0.113.7:40000", "observed")
    assert view.observed == ("203.0.113.7:40000",)


def test_one_mapping_seen_by_two_peers_is_advertised_and_endpoint_independent() -> None:
    view = classify(LOCAL, {A: "203.0.113.7:40000", B: "203.0.113.7:40000"})
    assert view.nat == NAT_EIM
    assert view.addresses == (("203.0.113.7:40000", "advertised"), *((a, "local") for a in LOCAL))


def test_one_public_ip_with_a_port_per_peer_is_symmetric() -> None:
    view = classify(LOCAL, {A: "203.0.113.7:40000", B: "203.0.113.7:40001"})
    assert view.nat == NAT_SYMMETRIC
    assert {a for a, kind in view.addresses if kind == "observed"} == {
        "203.0.113.7:40000",
        "203.0.113.7:40001",
    }


def test_a_symmetric_mapping_wins_over_an_agreed_one() -> None:
    reports = {A: "203.0.113.7:1", B: "203.0.113.7:1", C: "203.0.113.7:2"}
    assert classify(LOCAL, reports).nat == NAT_SYMMETRIC


def test_different_public_ips_once_each_show_no_kind() -> None:
    assert classify(LOCAL, {A: "203.0.113.7:1", B: "198.51.100.3:1"}).nat == NAT_UNKNOWN


def test_reports_of_our_own_address_do_not_hide_a_nat_others_see() -> None:
    view = classify(LOCAL, {A: "192.168.1.10:9337", B: "203.0.113.7:1", C: "203.0.113.7:1"})
    assert view.nat == NAT_EIM and view.observed == ("203.0.113.7:1",)


def test_addresses_are_ranked_most_agreed_first_and_observed_ones_are_bounded() -> None:
    reports = {f"{i:064x}": f"198.51.100.{i % 6}:7" for i in range(20)}
    reports[A] = "198.51.100.0:7"  # four observers now, three for the rest
    view = classify(LOCAL, reports)
    assert view.addresses[0] == ("198.51.100.0:7", "advertised")
    assert [a for a, _ in view.addresses[1:6]] == [f"198.51.100.{i}:7" for i in range(1, 6)]
    assert view.addresses[-2:] == tuple((a, "local") for a in LOCAL)
    assert len(view.observed) == MAX_OBSERVED and view.observed[0] == "198.51.100.0:7"


def test_a_view_encodes_its_kind_and_addresses() -> None:
    view = classify(("10.0.0.2:1",), {A: "203.0.113.7:1"})
    assert view.to_dict() == {
        "type": NAT_UNKNOWN,
        "addresses": [
            {"address": "203.0.113.7:1", "kind": "observed"},
            {"address": "10.0.0.2:1", "kind": "local"},
        ],
    }


_POOL = ["192.168.1.10:9337", "192.168.1.10:1", "203.0.113.7:1", "203.0.113.7:2", "198.51.100.3:1"]


@FUZZ
@given(st.dictionaries(st.sampled_from([A, B, C, "d" * 64, "e" * 64]), st.sampled_from(_POOL)), st.randoms())
def test_the_view_depends_on_what_was_reported_not_on_the_order(reports: dict[str, str], rnd: Any) -> None:
    view = classify(LOCAL, reports)
    items = list(reports.items())
    rnd.shuffle(items)
    assert classify(LOCAL, dict(items)) == view
    assert view.nat in NAT_KINDS
    foreign = [a for a in reports.values() if not a.startswith("192.168.1.10:")]
    assert sorted(a for a, kind in view.addresses if kind != "local") == sorted(set(foreign))
    assert (view.nat == NAT_NONE) == (bool(reports) and not foreign)


def test_an_observers_newest_report_replaces_its_older_one() -> None:
    obs = Observations(ttl_s=60.0)
    obs.report(A, "203.0.113.7:1", 0.0)
    obs.report(A, "203.0.113.7:2", 1.0)
    assert obs.current(1.0) == {A: "203.0.113.7:2"}
    assert obs.view(LOCAL, 1.0).nat == NAT_UNKNOWN  # one observer, not a symmetric NAT


def test_reports_older_than_the_ttl_are_not_current() -> None:
    obs = Observations(ttl_s=60.0)
    obs.report(A, "203.0.113.7:1", 0.0)
    obs.report(B, "203.0.113.7:1", 30.0)
    assert obs.view(LOCAL, 60.0).nat == NAT_EIM
    assert obs.current(60.5) == {B: "203.0.113.7:1"}
    assert obs.view(LOCAL, 60.5).nat == NAT_UNKNOWN
    assert obs.current(91.0) == {}


def test_a_forgotten_observer_no_longer_counts() -> None:
    obs = Observations()
    obs.report(A, "203.0.113.7:1", 0.0)
    obs.report(B, "203.0.113.7:1", 0.0)
    obs.forget(A)
    obs.forget(C)  # never reported: nothing happens
    assert obs.current(0.0) == {B: "203.0.113.7:1"}


def test_observers_are_bounded_and_the_longest_silent_go_first() -> None:
    obs = Observations()
    ids = [f"{i:064x}" for i in range(MAX_OBSERVERS + 8)]
    for i, node in enumerate(ids):
        obs.report(node, "203.0.113.7:1", float(i))
        if i == MAX_OBSERVERS:
            obs.report(ids[0], "203.0.113.7:1", float(i))  # the first speaks again: it stays
    current = obs.current(float(len(ids)))
    assert len(current) == MAX_OBSERVERS
    assert ids[0] in current and ids[-1] in current and ids[1] not in current


# ---- address probes: bookkeeping through a stub transport -----------------------------------


class _Link:
    """What AddressProbes uses of a PeerLink."""

    def __init__(self, node_id: str, remote_address: str, net: _Net | None = None) -> None:
        self.node_id, self.remote_address, self.is_open = node_id, remote_address, True
        self.sent: list[dict[str, Any]] = []
        self._net = net

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)
        if self._net is not None:
            self._net.deliver(self, msg)


class _Transport:
    """What AddressProbes uses of a MeshTransport: links by node id, and probe datagrams."""

    def __init__(self, net: _Net | None = None, node: str = "") -> None:
        self.links: dict[str, _Link] = {}
        self.probes: list[tuple[str, bytes]] = []
        self._net, self._node = net, node

    def link(self, peer: str) -> _Link | None:
        return self.links.get(peer)

    def send_probe(self, address: str, payload: bytes) -> None:
        self.probes.append((address, payload))
        if self._net is not None:
            self._net.datagram(self._node, address, payload)


class _Net:
    """Two or more nodes' AddressProbes wired together in memory: links carry messages as the
    traversal does (parse, then announced/answered), probe datagrams arrive from each sender's
    NAT mapping."""

    def __init__(self) -> None:
        self.probes: dict[str, AddressProbes] = {}
        self.transports: dict[str, _Transport] = {}
        self.listening: dict[str, str] = {}  # node -> listening address
        self.mapping: dict[str, str] = {}  # node -> where its datagrams appear to come from
        self.reports: list[tuple[str, str, str]] = []  # (reporter's node, peer, address)

    def add(self, node: str, listening: str, mapping: str) -> None:
        self.transports[node] = _Transport(self, node)
        self.listening[node], self.mapping[node] = listening, mapping
        self.probes[node] = AddressProbes(
            lambda: cast(Any, self.transports[node]),
            (0.0, 0.0, 0.0),
            lambda peer, address: self.reports.append((node, peer, address)),
        )

    def link(self, a: str, b: str) -> None:
        self.transports[a].links[b] = _Link(b, self.listening[b], self)
        self.transports[b].links[a] = _Link(a, self.mapping[a], self)

    def deliver(self, link: _Link, msg: dict[str, Any]) -> None:
        sender = next(n for n, t in self.transports.items() if link in t.links.values())
        message = parse(msg)
        if message.kind == "addr_probe":
            self.probes[link.node_id].announced(sender, message.nonce)
        elif message.kind == "addr_seen":
            self.probes[link.node_id].answered(sender, message.nonce, message.addresses[0])

    def datagram(self, sender: str, address: str, payload: bytes) -> None:
        for node, listening in self.listening.items():
            if listening == address:
                self.probes[node].on_probe(payload, self.mapping[sender])


def _probes(transport: _Transport, reports: list[tuple[str, str]]) -> AddressProbes:
    return AddressProbes(
        lambda: cast(Any, transport), (0.0, 0.0, 0.0), lambda peer, a: reports.append((peer, a))
    )


async def test_a_probe_learns_the_mapping_a_peer_sees_and_the_peer_learns_ours() -> None:
    net = _Net()
    net.add(A, "10.0.0.1:9000", "203.0.113.7:40000")  # behind a NAT
    net.add(B, "198.51.100.2:9000", "198.51.100.2:9000")  # public
    net.link(A, B)  # A dialed B
    await net.probes[A].probe(cast(Any, net.transports[A].links[B]))
    assert net.reports == [(A, B, "203.0.113.7:40000")]
    assert net.probes[B].seen_at(A) == "203.0.113.7:40000"
    # Answered after the first datagram: the retries stop.
    assert net.transports[A].probes == [
        ("198.51.100.2:9000", bytes.fromhex(net.transports[A].links[B].sent[0]["n"]))
    ]


async def test_a_probe_announces_a_fresh_nonce_then_sends_it_from_the_listening_socket() -> None:
    transport = _Transport()
    link = _Link(B, "[::ffff:198.51.100.2]:9000")
    probes = _probes(transport, [])
    await probes.probe(cast(Any, link))
    await probes.probe(cast(Any, link))
    (first, second) = (parse(m) for m in link.sent)
    assert first.kind == second.kind == "addr_probe" and first.nonce != second.nonce
    assert (
        transport.probes
        == [("198.51.100.2:9000", bytes.fromhex(first.nonce))] * 3
        + [("198.51.100.2:9000", bytes.fromhex(second.nonce))] * 3
    )


@pytest.mark.parametrize("remote", ["peer.example:9000", "0.0.0.0:9000", "", "[fe80::1%eth0]:9000"])
async def test_a_link_without_a_dialable_literal_address_is_not_probed(remote: str) -> None:
    transport = _Transport()
    link = _Link(B, remote)
    await _probes(transport, []).probe(cast(Any, link))
    assert link.sent == [] and transport.probes == []


async def test_a_closed_link_is_not_probed_further() -> None:
    transport = _Transport()
    link = _Link(B, "198.51.100.2:9000")
    link.is_open = False
    await _probes(transport, []).probe(cast(Any, link))
    assert transport.probes == []


async def _announced_nonce(probes: AddressProbes, peer: str) -> str:
    link = _Link(peer, "198.51.100.2:9000")
    link.is_open = False  # announce only: no datagrams
    await probes.probe(cast(Any, link))
    return str(link.sent[-1]["n"])


async def test_a_report_counts_once_and_only_from_the_peer_the_nonce_was_announced_to() -> None:
    reports: list[tuple[str, str]] = []
    probes = _probes(_Transport(), reports)
    nonce = await _announced_nonce(probes, B)
    probes.answered(B, NONCE, "203.0.113.7:1")  # a nonce never announced
    probes.answered(C, nonce, "203.0.113.66:6")  # announced to B, answered by C: forged
    assert reports == []
    probes.answered(B, nonce, "203.0.113.7:1")  # a forged answer must not cost the real one
    probes.answered(B, nonce, "203.0.113.7:2")  # a replay
    assert reports == [(B, "203.0.113.7:1")]


async def test_an_answer_for_another_peers_nonce_does_not_stop_its_probes() -> None:
    transport = _Transport()
    probes = _probes(transport, [])
    link = _Link(B, "198.51.100.2:9000")

    def forge(address: str, payload: bytes) -> None:
        transport.probes.append((address, payload))
        probes.answered(C, payload.hex(), "203.0.113.66:6")

    transport.send_probe = forge  # type: ignore[method-assign]
    await probes.probe(cast(Any, link))
    assert len(transport.probes) == 3


def test_an_announced_probe_is_answered_over_the_announcers_link_with_its_source() -> None:
    transport = _Transport()
    transport.links = {A: _Link(A, "203.0.113.7:40000"), C: _Link(C, "198.51.100.9:1")}
    probes = _probes(transport, [])
    probes.announced(A, NONCE)
    probes.on_probe(bytes.fromhex(NONCE), "[::ffff:203.0.113.7]:40000")
    assert [parse(m) for m in transport.links[A].sent] == [
        NatMessage("addr_seen", nonce=NONCE, addresses=("203.0.113.7:40000",))
    ]
    assert transport.links[C].sent == [] and probes.seen_at(A) == "203.0.113.7:40000"
    probes.on_probe(bytes.fromhex(NONCE), "203.0.113.7:40000")  # the retry: answered once only
    assert len(transport.links[A].sent) == 1
    probes.forget(A)
    assert probes.seen_at(A) is None


def test_a_probe_before_its_announcement_is_answered_when_the_announcement_comes() -> None:
    transport = _Transport()
    transport.links = {A: _Link(A, "203.0.113.7:40000")}
    probes = _probes(transport, [])
    probes.on_probe(bytes.fromhex(NONCE), "203.0.113.7:40000")
    assert transport.links[A].sent == []
    probes.announced(A, NONCE)
    assert [parse(m).addresses for m in transport.links[A].sent] == [("203.0.113.7:40000",)]


def test_a_probe_nobody_announced_is_not_answered() -> None:
    transport = _Transport()
    transport.links = {A: _Link(A, "203.0.113.7:40000")}
    probes = _probes(transport, [])
    probes.on_probe(bytes(16), "203.0.113.7:40000")
    probes.announced(A, NONCE)
    assert transport.links[A].sent == [] and probes.seen_at(A) is None


def test_a_probe_from_an_undialable_source_is_not_answered() -> None:
    transport = _Transport()
    transport.links = {A: _Link(A, "203.0.113.7:40000")}
    probes = _probes(transport, [])
    probes.announced(A, NONCE)
    probes.on_probe(bytes.fromhex(NONCE), "0.0.0.0:40000")
    assert transport.links[A].sent == [] and probes.seen_at(A) is None


def test_an_answer_to_a_peer_without_an_open_link_is_not_sent() -> None:
    transport = _Transport()
    transport.links = {A: _Link(A, "203.0.113.7:40000")}
    transport.links[A].is_open = False
    probes = _probes(transport, [])
    probes.announced(A, NONCE)
    probes.on_probe(bytes.fromhex(NONCE), "203.0.113.7:40000")
    assert transport.links[A].sent == [] and probes.seen_at(A) == "203.0.113.7:40000"


def test_a_peer_has_a_bounded_number_of_announced_nonces_waiting() -> None:
    transport = _Transport()
    transport.links = {A: _Link(A, "203.0.113.7:1"), C: _Link(C, "203.0.113.9:1")}
    probes = _probes(transport, [])
    nonces = [f"{i:032x}" for i in range(10)]
    for nonce in nonces:
        probes.announced(A, nonce)
    probes.announced(C, "f" * 32)  # another peer is not held back by A's
    for nonce in nonces:
        probes.on_probe(bytes.fromhex(nonce), "203.0.113.7:1")
    probes.on_probe(bytes.fromhex("f" * 32), "203.0.113.9:1")
    assert [parse(m).nonce for m in transport.links[A].sent] == nonces[:4]
    assert len(transport.links[C].sent) == 1


@FUZZ
@given(st.binary(max_size=64).filter(lambda b: len(b) != 16))
@example(PUNCH_PAYLOAD)
def test_a_payload_that_is_not_a_nonce_is_never_answered(payload: bytes) -> None:
    transport = _Transport()
    transport.links = {A: _Link(A, "203.0.113.7:1")}
    probes = _probes(transport, [])
    probes.on_probe(payload, "203.0.113.7:1")
    probes.announced(A, payload.hex())  # even if announced (the parser would refuse it anyway)
    probes.on_probe(payload, "203.0.113.7:1")
    assert transport.links[A].sent == [] and probes.seen_at(A) is None


# ---- helpers of the traversal ---------------------------------------------------------------


def test_a_rate_allows_its_limit_per_key_in_a_window_then_again_after() -> None:
    rate = _Rate(3, 10.0)
    assert [rate.allow("a", t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert rate.allow("b", 3.0)  # each key on its own
    assert not rate.allow("a", 9.99)
    assert rate.allow("a", 10.0)  # the event at 0 has left the window
    assert not rate.allow("a", 10.5)  # those at 1, 2 and 10 are still in it
    assert rate.allow("a", 12.0)


def test_a_refused_event_does_not_count_against_the_window() -> None:
    rate = _Rate(1, 10.0)
    assert rate.allow("a", 0.0)
    assert not any(rate.allow("a", t) for t in (1.0, 5.0, 9.0))
    assert rate.allow("a", 10.0)


def test_a_rate_keeps_a_bounded_number_of_keys() -> None:
    rate = _Rate(1, 1000.0)
    for i in range(5000):
        assert rate.allow(f"k{i}", 0.0)
    assert len(rate._events) <= 1024
    assert not rate.allow("k4999", 1.0)  # the newest keys are still limited


def test_unique_keeps_valid_addresses_in_order_normalised_once_each_at_most_six() -> None:
    first = [None, "[::ffff:1.2.3.4]:5", "peer.example:1"]
    then = ("1.2.3.4:5", "0.0.0.0:1", *(f"10.0.0.{i}:1" for i in range(1, 9)))
    assert _unique(first, then) == ("1.2.3.4:5", *(f"10.0.0.{i}:1" for i in range(1, 6)))
    assert _unique([None], ()) == ()


@FUZZ
@given(
    st.lists(st.none() | st.text(max_size=24) | _ADDRESS, max_size=5),
    st.lists(st.text(max_size=24) | _ADDRESS),
)
@example([None], ("1.2.3.4:²",))  # a signed record's `observed` holds any text
def test_unique_is_total_over_any_text(first: list[str | None], then: list[str]) -> None:
    out = _unique(first, tuple(then))
    assert len(out) <= 6 and len(set(out)) == len(out)
    assert all(ip_address_text(a, "a") == a for a in out)


def test_nat_timings_defaults_are_sane() -> None:
    t = NatTimings()
    assert t.relay
    retries = t.probe_retries_s
    assert retries and retries[0] >= 0.0 and list(retries) == sorted(retries)
    assert retries[-1] < t.probe_every_s  # one exchange ends before the next begins
    assert 0 < t.punch_probe_every_s < t.punch_timeout_s
    assert int(t.punch_timeout_s / t.punch_probe_every_s) >= 10  # enough probes to open a NAT
    assert 0 < t.ask_timeout_s and 0 < t.relay_timeout_s
    assert 0 < t.upgrade_every_s <= t.upgrade_max_s
    assert t.asks_per_window >= 1 and t.ask_window_s > 0 and t.coordinators >= 1
    with pytest.raises(FrozenInstanceError):
        t.relay = False  # type: ignore[misc]


# ---- the record's observed addresses and NAT kind ------------------------------------------


def _signed(key: NodeIdentity, **fields: Any) -> NodeRecord:
    record = NodeRecord(node_id=key.node_id, incarnation=1, addresses=("10.0.0.1:9337",), **fields)
    body = {k: v for k, v in record.unsigned_dict().items() if k != "heartbeat"}
    sig = key.sign(record_signing_bytes(body)).hex()
    return NodeRecord.from_dict({**body, "heartbeat": 0, "sig": sig})


def test_a_record_carries_observed_addresses_and_the_nat_kind_signed() -> None:
    key = NodeIdentity.generate()
    record = _signed(key, observed=("203.0.113.7:40000",), nat=NAT_EIM)
    back = NodeRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back == record and back.observed == ("203.0.113.7:40000",) and back.nat == NAT_EIM
    assert back.signed_by_owner(NodeIdentity.verify)
    changes: list[dict[str, Any]] = [{"observed": ["198.51.100.66:1"]}, {"nat": NAT_NONE}, {"observed": []}]
    for change in changes:
        forged = NodeRecord.from_dict({**record.to_dict(), **change})
        assert not forged.signed_by_owner(NodeIdentity.verify)


def test_a_record_without_the_fields_reads_as_no_reports_yet() -> None:
    d = NodeRecord(node_id=A, incarnation=1).to_dict()
    del d["observed"], d["nat"]
    record = NodeRecord.from_dict(d)
    assert record.observed == () and record.nat == ""


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("observed", "203.0.113.7:1"),
        ("observed", {"a": "203.0.113.7:1"}),
        ("observed", None),
        ("observed", 7),
        ("observed", [7]),
        ("observed", [None]),
        ("observed", [["203.0.113.7:1"]]),
        ("observed", ["203.0.113.7:1"] * (RECORD_MAX_ADDRESSES + 1)),
        ("observed", ["x"] * 100_000),
        ("observed", ["1" * 300]),
        ("nat", 1),
        ("nat", None),
        ("nat", ["none"]),
        ("nat", {"type": "none"}),
        ("nat", True),
        ("nat", "x" * 33),
    ],
)
def test_hostile_observed_and_nat_fields_are_malformed(key: str, value: object) -> None:
    with pytest.raises(MalformedFrame):
        NodeRecord.from_dict({**NodeRecord(node_id=A, incarnation=1).to_dict(), key: value})


@FUZZ
@given(st.sampled_from(["observed", "nat"]), JSON)
def test_any_json_in_observed_or_nat_reads_as_text_or_is_malformed(key: str, value: object) -> None:
    try:
        record = NodeRecord.from_dict({**NodeRecord(node_id=A, incarnation=1).to_dict(), key: value})
    except MalformedFrame:
        return
    assert isinstance(record.nat, str) and all(isinstance(a, str) for a in record.observed)
    assert isinstance(record.signed, MappingProxyType)


def test_the_record_carries_only_addresses_that_several_peers_agree_on() -> None:
    from mesh_llm.mesh.nat._observed import classify

    one = classify(("10.0.0.2:7000",), {"p1": "203.0.113.9:7000"})
    assert one.observed == ("203.0.113.9:7000",) and one.advertised == ()  # one member's word
    two = classify(
        ("10.0.0.2:7000",), {"p1": "203.0.113.9:7000", "p2": "203.0.113.9:7000", "p3": "198.51.100.1:1"}
    )
    assert two.advertised == ("203.0.113.9:7000",)


def test_a_retired_http_transport_stays_until_its_link_closes() -> None:
    from mesh_llm.mesh.http_transport import HttpTransports

    class Link:
        def __init__(self) -> None:
            self.node_id, self.is_open, self.short_id = "n" * 64, True, "nnnnnnnn"

    transports = HttpTransports("http")
    relayed, direct = Link(), Link()
    first, done = transports.get(relayed, "M")  # type: ignore[arg-type]
    assert done == []
    second, done = transports.get(direct, "M")  # type: ignore[arg-type]
    assert second is not first and done == []  # the relayed link still carries requests
    assert transports.get(direct, "M")[0] is second  # type: ignore[arg-type]
    relayed.is_open = False
    assert transports.get(direct, "M") == (second, [first])  # type: ignore[arg-type]
    assert transports.drop("n" * 64) == [second] and transports.drop() == []
