"""What peers observe of this node's listening socket, and what that says of its NAT (pure).

Each linked peer that received one of our address probes reports the address it came from: our
NAT's mapping of the listening socket. One report is enough to punch with ("observed"); the same
address reported by two or more peers is "advertised". Two peers that see one public IP with
different ports mean the NAT maps each destination anew (symmetric: punching cannot work, a relay
is needed); the same port means one mapping for all (endpoint-independent: punching works).
Peers that see one of our own interface addresses see us without a NAT between.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from mesh_llm.peer.token import parse_address

NAT_NONE: Final = "none"  # peers reach us at our own address
NAT_EIM: Final = "endpoint-independent"
NAT_SYMMETRIC: Final = "symmetric"
NAT_UNKNOWN: Final = "unknown"
MAX_OBSERVERS: Final = 32
MAX_OBSERVED: Final = 4  # observed addresses advertised in the record


@dataclass(frozen=True)
class NatView:
    """This node's addresses as the mesh sees them, and its NAT's kind."""

    nat: str
    addresses: tuple[tuple[str, str], ...]  # (address, "local" | "observed" | "advertised")

    @property
    def observed(self) -> tuple[str, ...]:
        """Addresses peers see that are not our own, most agreed first (at most MAX_OBSERVED)."""
        return tuple(a for a, kind in self.addresses if kind != "local")[:MAX_OBSERVED]

    @property
    def advertised(self) -> tuple[str, ...]:
        """What the node's signed record carries: only addresses two or more peers agree on, so
        one member cannot put an address of its choosing into another node's record."""
        return tuple(a for a, kind in self.addresses if kind == "advertised")[:MAX_OBSERVED]

    def to_dict(self) -> dict[str, object]:
        return {"type": self.nat, "addresses": [{"address": a, "kind": k} for a, k in self.addresses]}


def _ip(address: str) -> str:
    host, _ = parse_address(address)
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class Observations:
    """The newest address each peer reported for our listening socket, within `ttl_s`."""

    def __init__(self, ttl_s: float = 120.0) -> None:
        self._ttl = ttl_s
        self._reports: dict[str, tuple[str, float]] = {}  # observer -> (address, when)

    def report(self, observer: str, address: str, now: float) -> None:
        self._reports.pop(observer, None)
        self._reports[observer] = (address, now)
        while len(self._reports) > MAX_OBSERVERS:
            del self._reports[next(iter(self._reports))]

    def forget(self, observer: str) -> None:
        self._reports.pop(observer, None)

    def current(self, now: float) -> dict[str, str]:
        """Observer -> the address it reported, for reports younger than the TTL."""
        return {o: a for o, (a, when) in self._reports.items() if now - when <= self._ttl}

    def view(self, local: Iterable[str], now: float) -> NatView:
        return classify(tuple(local), self.current(now))


def classify(local: tuple[str, ...], reports: dict[str, str]) -> NatView:
    """Our addresses with their kinds, and the NAT's kind, from peers' reports."""
    own_ips = {_ip(a) for a in local}
    foreign = {observer: a for observer, a in reports.items() if _ip(a) not in own_ips}
    seen_by: dict[str, int] = {}
    for address in foreign.values():
        seen_by[address] = seen_by.get(address, 0) + 1
    ports_by_ip: dict[str, set[str]] = {}
    for address in seen_by:
        ports_by_ip.setdefault(_ip(address), set()).add(address)
    if reports and not foreign:
        nat = NAT_NONE
    elif any(len(ports) > 1 for ports in ports_by_ip.values()):
        nat = NAT_SYMMETRIC
    elif any(count > 1 for count in seen_by.values()):
        nat = NAT_EIM
    else:
        nat = NAT_UNKNOWN
    ranked = sorted(seen_by, key=lambda a: (-seen_by[a], a))
    addresses = tuple((a, "advertised" if seen_by[a] > 1 else "observed") for a in ranked)
    return NatView(nat, addresses + tuple((a, "local") for a in local))
