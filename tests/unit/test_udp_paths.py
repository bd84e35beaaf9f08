"""Datagram sizes per path: which routes count as directly attached."""

from __future__ import annotations

import ipaddress

from mesh_llm.transport._udp import datagram_size, on_link, plain_ip

# /proc/net/route: a default route via 10.0.0.1 on eth0, and 10.0.0.0/24 attached to eth0.
IPV4 = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
# /proc/net/ipv6_route: fd00::/64 on link, ::/0 via fe80::1.
IPV6 = (
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n"
)


def test_an_address_on_an_attached_network_is_on_link() -> None:
    assert on_link(ipaddress.ip_address("10.0.0.7"), IPV4, IPV6) is True
    assert on_link(ipaddress.ip_address("fd00::7"), IPV4, IPV6) is True


def test_an_address_behind_a_gateway_is_not() -> None:
    assert on_link(ipaddress.ip_address("192.0.2.9"), IPV4, IPV6) is False
    assert on_link(ipaddress.ip_address("2001:db8::1"), IPV4, IPV6) is False


def test_no_route_tables_means_unknown() -> None:
    assert on_link(ipaddress.ip_address("10.0.0.7"), "", "") is None


def test_mapped_and_scoped_addresses_are_unwrapped() -> None:
    assert plain_ip("::ffff:10.0.0.7") == ipaddress.ip_address("10.0.0.7")
    assert plain_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert plain_ip("example.com") is None


def test_loopback_gets_the_same_host_size_and_names_the_default() -> None:
    assert datagram_size("127.0.0.1", default=1452, same_host=16336) == 16336
    assert datagram_size("::1", default=1452, same_host=16336) == 16336
    assert datagram_size("not-an-ip", default=1452, same_host=16336) == 1452
