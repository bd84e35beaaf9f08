"""This machine's own addresses, as a node tells peers where to dial it."""

from __future__ import annotations

import ipaddress

import psutil

from mesh_llm.peer.token import format_address


def local_addresses(port: int) -> list[str]:
    """Every usable address of this machine with the mesh port: LAN first, loopback last."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                ip = ipaddress.ip_address(a.address.split("%")[0])
            except ValueError:
                continue
            if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue  # link-local needs a scope id a token cannot carry
            found.append(ip)
    found = sorted(set(found), key=lambda ip: (ip.is_loopback, ip.version, str(ip)))
    if not any(ip.is_loopback and ip.version == 4 for ip in found):
        found.append(ipaddress.ip_address("127.0.0.1"))
    return [format_address(str(ip), port) for ip in found]
