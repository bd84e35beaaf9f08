"""UDP sockets for QUIC: binding, buffer sizes, reading bursts, and datagram sizes per path.

Datagram size matters because each datagram costs the QUIC engine a fixed amount of work to
build and parse, so a 9.6 KB RPC request in 1 datagram instead of 7 cuts its latency. Neither
engine does path MTU discovery, so a size is chosen per peer when the connection starts:
- a peer on this host (loopback, or one of our own addresses) never leaves the kernel: up to
  the same-host size (16 KiB, macOS's loopback MTU less headers);
- a peer on a directly attached network (no gateway on the route): the route's MTU less the IP
  and UDP headers, which is what every hop on that path carries;
- anyone else (routed, or the route cannot be read): the configured default, which assumes
  only an Ethernet MTU.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from mesh_llm.errors import ConfigError, TransportError
from mesh_llm.peer.token import format_address

log = logging.getLogger(__name__)

SOCKET_BUFFER_BYTES = 4 << 20
DRAIN_BATCH = 64
RECV_BYTES = 65536
_UDP_HEADER = 8
_IP_HEADER = {4: 20, 6: 40}
_IP_MTU = getattr(socket, "IP_MTU", 14)  # Linux values; absent from Python's socket on some builds
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def bind_socket(host: str, port: int) -> tuple[socket.socket, str]:
    """A bound, non-blocking UDP socket and the host it is bound to.

    "::" listens dual-stack (IPv4 peers arrive as ::ffff:a.b.c.d); without IPv6 it falls back
    to IPv4 only.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"bind host {host!r} must be an IP address such as :: or 0.0.0.0") from exc
    try:
        if ip.version == 6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            if ip.is_unspecified:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            address: tuple[Any, ...] = (host, port, 0, 0)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            address = (host, port)
    except OSError as exc:
        if ip.version == 6 and ip.is_unspecified:
            log.warning("no IPv6 on this host (%s); listening on IPv4 only", exc)
            return bind_socket("0.0.0.0", port)
        raise TransportError(f"cannot create a UDP socket: {exc}") from exc
    try:
        enlarge_buffers(sock)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise TransportError(
            f"cannot listen on UDP {format_address(host, port)}: {exc.strerror or exc}"
        ) from exc
    return sock, host


def enlarge_buffers(sock: socket.socket) -> None:
    """Ask for 4 MiB socket buffers (bursts overflow the default ~200 KiB into loss); take what is granted."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


def drain_socket(
    sock: socket.socket,
    transport: Any,
    handle: Callable[[bytes, Any], None],
    on_error: Callable[[Exception], None],
) -> None:
    """Hand `handle` the datagrams already queued on `sock`, up to DRAIN_BATCH of them.

    asyncio reads one datagram per event-loop turn; reading the rest of a burst at once lets
    the connection answer it with one transmit. The level-triggered selector reports the rest.
    """
    for _ in range(DRAIN_BATCH):
        if transport is None or transport.is_closing():
            return
        try:
            data, addr = sock.recvfrom(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. an ICMP error queued on a dialer's connected socket
            on_error(exc)
            return
        handle(data, addr)


def plain_ip(host: str) -> IpAddress | None:
    """The IP address in `host` (scope id dropped, IPv4-mapped IPv6 unwrapped), or None."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_same_host(host: str) -> bool:
    """Whether datagrams to `host` stay inside this machine: loopback, or one of our own addresses.

    Not cached: an address that is ours now may be another host's later.
    """
    ip = plain_ip(host)
    if ip is None or ip.is_unspecified or ip.is_multicast:
        return False
    if ip.is_loopback:
        return True
    # The kernel routes a local address to itself and picks that very address as the source;
    # connecting a UDP socket only looks the route up, it sends nothing.
    source = _route_source(ip)
    return source is not None and source == ip


def on_link(ip: IpAddress, ipv4_routes: str, ipv6_routes: str) -> bool | None:
    """Whether the most specific route to `ip` has no gateway, from Linux's /proc/net route tables.

    `ipv4_routes` is /proc/net/route's text, `ipv6_routes` /proc/net/ipv6_route's. None when no
    route matches (or the tables are empty, as off Linux).
    """
    best: tuple[int, bool] | None = None
    if ip.version == 4:
        target = int(ip)
        for line in ipv4_routes.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                # Addresses are written as little-endian hex of the network-order bytes.
                destination = int.from_bytes(bytes.fromhex(fields[1]), "little")
                gateway = int.from_bytes(bytes.fromhex(fields[2]), "little")
                mask = int.from_bytes(bytes.fromhex(fields[7]), "little")
            except ValueError:
                continue
            if target & mask == destination & mask:
                prefix = bin(mask).count("1")
                if best is None or prefix > best[0]:
                    best = (prefix, gateway == 0)
    else:
        target = int(ip)
        for line in ipv6_routes.splitlines():
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                destination, prefix = int(fields[0], 16), int(fields[1], 16)
                next_hop = int(fields[4], 16)
            except ValueError:
                continue
            if prefix > 128:
                continue
            shift = 128 - prefix
            if target >> shift == destination >> shift and (best is None or prefix > best[0]):
                best = (prefix, next_hop == 0)
    return None if best is None else best[1]


def datagram_size(host: str, *, default: int, same_host: int) -> int:
    """The UDP payload to use towards `host` (see the module docstring)."""
    ip = plain_ip(host)
    if ip is None:
        return default
    if is_same_host(host):
        return same_host
    with contextlib.suppress(OSError):
        with open("/proc/net/route") as v4, open("/proc/net/ipv6_route") as v6:
            direct = on_link(ip, v4.read(), v6.read())
        if direct:
            mtu = _route_mtu(ip)
            if mtu is not None:
                return max(default, min(mtu - _IP_HEADER[ip.version] - _UDP_HEADER, same_host))
    return default


def _route_source(ip: IpAddress) -> IpAddress | None:
    try:
        with socket.socket(
            socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM
        ) as probe:
            probe.connect((str(ip), 9))
            return plain_ip(str(probe.getsockname()[0]))
    except OSError:
        return None


def _route_mtu(ip: IpAddress) -> int | None:
    """The MTU the kernel knows for the route to `ip` (Linux), or None."""
    family, level, option = (
        (socket.AF_INET6, socket.IPPROTO_IPV6, _IPV6_MTU)
        if ip.version == 6
        else (socket.AF_INET, socket.IPPROTO_IP, _IP_MTU)
    )
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ip), 9))
            mtu = probe.getsockopt(level, option)
    except OSError:
        return None
    return mtu if isinstance(mtu, int) and mtu >= 1280 else None


_SOL_UDP = 17
_UDP_SEGMENT = 103  # Linux UDP generic segmentation offload (4.18+)
_GSO_MAX_BYTES = 65000
_GSO_MAX_SEGMENTS = 64
_gso_works = sys.platform == "linux"


def send_datagrams(
    sock: socket.socket | None, transport: Any, datagrams: list[tuple[bytes, Any]], *, connected: bool
) -> None:
    """Send QUIC's datagrams; each run of equal-sized ones to one address goes in one syscall.

    With UDP GSO the kernel cuts one buffer into datagrams of the given size (the last may be
    shorter): a bulk transfer costs one sendmsg per ~44 datagrams instead of one sendto each.
    Whatever cannot go that way (no GSO, a full socket buffer, the transport already holding
    a backlog) goes through the asyncio transport one by one, which queues it in order.
    """
    global _gso_works
    if transport is None or transport.is_closing():
        return
    i, n = 0, len(datagrams)
    while i < n:
        data, addr = datagrams[i]
        size, total, j = len(data), len(data), i + 1
        while (
            j < n
            and j - i < _GSO_MAX_SEGMENTS
            and datagrams[j][1] == addr
            and len(datagrams[j - 1][0]) == size
            and len(datagrams[j][0]) <= size
            and total + len(datagrams[j][0]) <= _GSO_MAX_BYTES
        ):
            total += len(datagrams[j][0])
            j += 1
        if j - i > 1 and _gso_works and sock is not None and transport.get_write_buffer_size() == 0:
            buffer = b"".join(d for d, _ in datagrams[i:j])
            control = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))]
            try:
                if connected:
                    sock.sendmsg([buffer], control)
                else:
                    sock.sendmsg([buffer], control, 0, addr)
                i = j
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    log.info("UDP segmentation offload unavailable (%s); sending datagrams one by one", exc)
                    _gso_works = False
                else:
                    raise
        for d, a in datagrams[i:j]:
            transport.sendto(d, a)
        i = j


def display_address(addr: Any) -> str:
    """'host:port' for a socket address, with IPv4-mapped IPv6 shown as plain IPv4."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "?"
    host = str(addr[0])
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            host = str(ip.ipv4_mapped)
    return format_address(host, int(addr[1]))
