"""The NAT traversal messages between members, and their parsers (pure, total).

Every parser takes any JSON value and returns a typed message or raises MalformedFrame: a
member's message is only ever a hint, checked before use. Addresses must be literal IP
addresses with a port (never names: nothing a peer sends makes us look a name up), and not
unspecified, multicast or broadcast ones.

  addr_probe  {n}          "I am sending a probe with nonce n from my listening socket"
  addr_seen   {n, a}       "your probe n came from address a" (its NAT mapping)
  punch_ask   {to, a}      "link me with member `to`; I can be reached at a"
  punch       {from, a}    (coordinator to target) "`from` dials you now from a: open your NAT"
  punch_go    {to, a}      (coordinator to asker) "`to` is opening its NAT: dial it at a"
  punch_no    {to, why}    (coordinator to asker) "I cannot coordinate with `to`"
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from mesh_llm.errors import MalformedFrame
from mesh_llm.peer.identity import is_node_id
from mesh_llm.peer.token import format_address

NONCE_HEX: Final = 32  # 16 random bytes
MAX_ADDRESSES: Final = 6  # addresses one message may name
MAX_WHY: Final = 200
KINDS: Final = frozenset({"addr_probe", "addr_seen", "punch_ask", "punch", "punch_go", "punch_no"})


@dataclass(frozen=True)
class NatMessage:
    """One parsed traversal message: `peer` is the member it names (to/from), if any."""

    kind: str
    nonce: str = ""
    peer: str = ""
    addresses: tuple[str, ...] = ()
    why: str = ""


def ip_address_text(value: object, what: str) -> str:
    """A literal "ip:port" (IPv6 in brackets), normalised; MalformedFrame otherwise."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise MalformedFrame(f"{what}: expected an ip:port text")
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise MalformedFrame(f"{what}: expected an ip:port text")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise MalformedFrame(f"{what}: an IPv6 address needs brackets ([::1]:port)")
    if "%" in host:
        raise MalformedFrame(f"{what}: {value!r} carries a scope id")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MalformedFrame(f"{what}: {value!r} is not an IP address with a port") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not 0 < port < 65536 or ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        raise MalformedFrame(f"{what}: {value!r} cannot be dialled")
    return format_address(str(ip), port)


def _addresses(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ADDRESSES:
        raise MalformedFrame(f"{what}: expected a list of at most {MAX_ADDRESSES} addresses")
    return tuple(dict.fromkeys(ip_address_text(a, f"{what}[{i}]") for i, a in enumerate(value)))


def _node(value: object, what: str) -> str:
    if not isinstance(value, str) or not is_node_id(value):
        raise MalformedFrame(f"{what}: expected a node id")
    return value


def _nonce(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != NONCE_HEX or value.strip("0123456789abcdef"):
        raise MalformedFrame(f"{what}: expected {NONCE_HEX} lowercase hex digits")
    return value


def parse(msg: object) -> NatMessage:
    """Parse one traversal message (its "t" must be one of KINDS)."""
    if not isinstance(msg, dict):
        raise MalformedFrame("nat message: expected an object")
    kind = msg.get("t")
    if not isinstance(kind, str) or kind not in KINDS:
        raise MalformedFrame(f"nat message: unknown type {kind!r}")
    what = f"{kind}"
    if kind == "addr_probe":
        return NatMessage(kind, nonce=_nonce(msg.get("n"), f"{what}.n"))
    if kind == "addr_seen":
        return NatMessage(
            kind,
            nonce=_nonce(msg.get("n"), f"{what}.n"),
            addresses=(ip_address_text(msg.get("a"), f"{what}.a"),),
        )
    if kind == "punch_no":
        why = msg.get("why", "")
        if not isinstance(why, str):
            raise MalformedFrame(f"{what}.why: expected text")
        return NatMessage(kind, peer=_node(msg.get("to"), f"{what}.to"), why=why[:MAX_WHY])
    key = "from" if kind == "punch" else "to"
    return NatMessage(
        kind, peer=_node(msg.get(key), f"{what}.{key}"), addresses=_addresses(msg.get("a"), f"{what}.a")
    )


def encode(message: NatMessage) -> dict[str, Any]:
    """The wire form of `message` (what `parse` reads back)."""
    kind = message.kind
    if kind == "addr_probe":
        return {"t": kind, "n": message.nonce}
    if kind == "addr_seen":
        return {"t": kind, "n": message.nonce, "a": message.addresses[0]}
    if kind == "punch_no":
        return {"t": kind, "to": message.peer, "why": message.why[:MAX_WHY]}
    key = "from" if kind == "punch" else "to"
    return {"t": kind, key: message.peer, "a": list(message.addresses[:MAX_ADDRESSES])}
