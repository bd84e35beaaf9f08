"""A NAT lab in network namespaces: one public host and two hosts behind home-style NAT routers.

For tests of NAT traversal (hole punching, relaying). Six namespaces, IPv4 only:

                           hub: bridge br0 ("the internet", 203.0.113.0/24)
               .---------------------+---------------------.
               |                     |                     |
          A 203.0.113.10     R1 out 203.0.113.11     R2 out 203.0.113.12
          (public host)      R1 in  10.71.1.1        R2 in  10.71.2.1
                                     |                     |
                             B 10.71.1.2            C 10.71.2.2

* A has only the public segment's connected route: it reaches the routers' outside addresses,
  never the private LANs behind them.
* R1 and R2 forward with `nft` masquerade on their outside link: "eim" is Linux's default
  (endpoint-independent mapping: one socket keeps one public port for every destination, the
  port preserved when free), "symmetric" is `masquerade random,fully-random` (a fresh random
  port per destination). Filtering is a home router's: inbound on the outside link is accepted
  only when conntrack says established/related, nothing is DNAT'ed, and everything else is
  dropped silently (no ICMP) and counted in a named counter, `Lab.unsolicited(router)`, which
  lets a test observe a drop as an event without conntrack-tools.
* B and C route everything via their router.
* "none" makes a router a plain one (for comparisons without NAT): it forwards both ways, and
  A and the other router get a route to its LAN, so B's and C's own addresses are reachable.

`nat_lab(c_nat=..., b_nat=...)` yields a `Lab`: namespace names and addresses, `prefix(ns)` to
start a process inside one, `run`/`python` to run one to completion, `cut`/`heal` to take a host
off the network and back, `unsolicited(router)`, and `capture(ns, path)`, a pcap recording of a
namespace's links (read back with `udp_frames`, e.g. for a plaintext check). `NamespaceThread`
runs functions of this process inside a namespace (e.g. httpx calls to a node's API there).

Namespace names carry the pid and a random tag, so runs (and labs) never collide; interface
names live inside the namespaces. Needs root, iproute2 and nftables (bundle/install-nat.sh).
Everything is removed on leaving `nat_lab`, also after a failure: the processes still inside
the namespaces are killed, and the namespaces (with their links and nft rules) deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

NatKind = Literal["eim", "symmetric", "none"]
_MASQUERADE: dict[NatKind, str] = {
    "eim": "masquerade",
    "symmetric": "masquerade random,fully-random",
    "none": "",  # a plain router: no NAT, no filter
}
T = TypeVar("T")

IP_A, PUBLIC_R1, PUBLIC_R2 = "203.0.113.10", "203.0.113.11", "203.0.113.12"  # TEST-NET-3
LAN_B, GATEWAY_B, IP_B = "10.71.1.0/24", "10.71.1.1", "10.71.1.2"
LAN_C, GATEWAY_C, IP_C = "10.71.2.0/24", "10.71.2.1", "10.71.2.2"
TIMEOUT = 10.0  # for each setup and teardown command


def router_ruleset(kind: NatKind, lan: str) -> str:
    """The nft ruleset of a router whose inside link `in` holds `lan` and outside link is `out`."""
    if kind not in _MASQUERADE:
        raise ValueError(f"unknown NAT kind {kind!r}: pick one of {sorted(_MASQUERADE)}")
    if kind == "none":
        return "table ip natlab {\n    counter unsolicited { }\n}\n"  # forwards all; drops nothing
    return f"""
table ip natlab {{
    counter unsolicited {{ }}
    # Dropped, not refused: accepting an unsolicited datagram to the router itself (Linux's
    # default) answers it with ICMP port-unreachable and confirms a conntrack entry for it, and
    # the inside host's later datagram to that peer then gets another public port: a hole punch
    # whose peer's first datagram came early fails.
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "out" ct state established,related accept
        iifname "out" counter name "unsolicited" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        iifname "in" oifname "out" ip saddr {lan} accept
        iifname "out" oifname "in" ct state established,related accept
        iifname "out" counter name "unsolicited" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "out" {_MASQUERADE[kind]}
    }}
}}
"""


def _in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def _run(argv: Sequence[str], stdin: str | None = None, timeout: float = TIMEOUT) -> str:
    out = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def _ip(ns: str, *args: str) -> None:
    _run(["ip", "-n", ns, *args])


def _sysctl(ns: str, *settings: str) -> None:
    _run([*_in_ns(ns), "sysctl", "-q", "-w", *settings])


@dataclass(frozen=True)
class Lab:
    """A built lab: namespace names, addresses, and ways to act inside it."""

    hub: str
    a: str
    r1: str
    r2: str
    b: str
    c: str
    b_nat: NatKind
    c_nat: NatKind
    ip_a: str = IP_A
    ip_b: str = IP_B
    ip_c: str = IP_C
    public_b: str = PUBLIC_R1  # R1's outside address: where B's traffic seems to come from
    public_c: str = PUBLIC_R2

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.hub, self.a, self.r1, self.r2, self.b, self.c)

    def prefix(self, ns: str) -> list[str]:
        """The argv prefix that runs a process inside `ns` (e.g. NodeProcess's prefix)."""
        return _in_ns(ns)

    def run(self, ns: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `ns` to completion; the caller checks the result."""
        return subprocess.run([*_in_ns(ns), *argv], capture_output=True, text=True, timeout=timeout)

    def python(self, ns: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python `code` (this interpreter, so the project's venv) inside `ns`."""
        return self.run(ns, [sys.executable, "-c", code], timeout)

    def cut(self, ns: str) -> None:
        """Take host `ns` (A, B or C) off the network: its uplink's far end goes down."""
        far_ns, dev = self._uplink(ns)
        _ip(far_ns, "link", "set", "dev", dev, "down")

    def heal(self, ns: str) -> None:
        """Undo `cut(ns)`: addresses and routes were kept, so the host is back as it was."""
        far_ns, dev = self._uplink(ns)
        _ip(far_ns, "link", "set", "dev", dev, "up")

    def unsolicited(self, router: str) -> int:
        """How many inbound packets router `router` (r1 or r2) has dropped as unsolicited."""
        out = _run([*_in_ns(router), "nft", "-j", "list", "counter", "ip", "natlab", "unsolicited"])
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError(f"no unsolicited counter in {router}: {out}")

    @contextlib.contextmanager
    def capture(self, ns: str, path: Path) -> Iterator[Path]:
        """Record every frame on every link of `ns` to a pcap file at `path` while inside.

        A raw AF_PACKET socket in Python, so no tcpdump is needed. `hub` sees all traffic
        between A, R1 and R2 (each bridged frame twice, once per port); `a` sees A's own.
        """
        proc = subprocess.Popen(
            [*_in_ns(ns), sys.executable, "-c", _CAPTURE, str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":  # EOF: the capture could not start
                raise RuntimeError(f"capture in {ns} did not start: {proc.communicate(timeout=TIMEOUT)[1]}")
            yield path
        finally:
            proc.send_signal(signal.SIGTERM)  # the script drains what the kernel queued, then exits
            try:
                proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=TIMEOUT)

    def _uplink(self, ns: str) -> tuple[str, str]:
        # The far end, so the host keeps its own routes (a downed local link would drop them).
        ends = {self.a: (self.hub, "to-a"), self.b: (self.r1, "in"), self.c: (self.r2, "in")}
        if ns not in ends:
            raise ValueError(f"{ns} is not one of the lab's hosts A, B, C")
        return ends[ns]


@contextlib.contextmanager
def nat_lab(c_nat: NatKind = "eim", b_nat: NatKind = "eim") -> Iterator[Lab]:
    """Build the lab (B behind R1 with `b_nat`, C behind R2 with `c_nat`), yield it, remove it."""
    run = f"{os.getpid()}-{secrets.token_hex(2)}"
    lab = Lab(
        hub=f"nat-hub-{run}", a=f"nat-a-{run}", r1=f"nat-r1-{run}", r2=f"nat-r2-{run}",
        b=f"nat-b-{run}", c=f"nat-c-{run}", b_nat=b_nat, c_nat=c_nat,
    )  # fmt: skip
    try:
        _build(lab)
        yield lab
    finally:
        _remove(lab)


def _build(lab: Lab) -> None:
    for ns in lab.namespaces:
        _run(["ip", "netns", "add", ns])
        _ip(ns, "link", "set", "lo", "up")
        # IPv4 only: no link-local IPv6 path around the NATs, and quieter captures.
        _sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    _ip(lab.hub, "link", "add", "br0", "type", "bridge")
    _ip(lab.hub, "link", "set", "br0", "up")
    # Each link is made with both ends already in place: nothing is created in the root namespace.
    links = [  # (ns, dev, address/prefix, peer ns, peer dev)
        (lab.a, "eth0", f"{IP_A}/24", lab.hub, "to-a"),
        (lab.r1, "out", f"{PUBLIC_R1}/24", lab.hub, "to-r1"),
        (lab.r2, "out", f"{PUBLIC_R2}/24", lab.hub, "to-r2"),
        (lab.b, "eth0", f"{IP_B}/24", lab.r1, "in"),
        (lab.c, "eth0", f"{IP_C}/24", lab.r2, "in"),
    ]
    for ns, dev, addr, peer_ns, peer in links:
        _run(["ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer, "netns", peer_ns])
        _ip(ns, "addr", "add", addr, "dev", dev)
        _ip(ns, "link", "set", "dev", dev, "up")
        if peer_ns == lab.hub:
            _ip(lab.hub, "link", "set", "dev", peer, "master", "br0")
        _ip(peer_ns, "link", "set", "dev", peer, "up")
    for router, gateway, lan, kind in (
        (lab.r1, GATEWAY_B, LAN_B, lab.b_nat),
        (lab.r2, GATEWAY_C, LAN_C, lab.c_nat),
    ):
        _ip(router, "addr", "add", f"{gateway}/24", "dev", "in")
        _sysctl(router, "net.ipv4.ip_forward=1")
        _run([*_in_ns(router), "nft", "-f", "-"], stdin=router_ruleset(kind, lan))
    _ip(lab.b, "route", "add", "default", "via", GATEWAY_B)
    _ip(lab.c, "route", "add", "default", "via", GATEWAY_C)
    for kind, lan, via, other_router in (
        (lab.b_nat, LAN_B, PUBLIC_R1, lab.r2),
        (lab.c_nat, LAN_C, PUBLIC_R2, lab.r1),
    ):
        if kind == "none":  # the LAN behind a plain router is routed to, from A and the other router
            _ip(lab.a, "route", "add", lan, "via", via)
            _ip(other_router, "route", "add", lan, "via", via)


def _remove(lab: Lab) -> None:
    """Kill what still runs inside the lab, then delete its namespaces; never raises."""
    for ns in lab.namespaces:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=TIMEOUT
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    for ns in lab.namespaces:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                ["ip", "netns", "del", ns], capture_output=True, timeout=max(1.0, deadline - time.monotonic())
            )


_CLONE_NEWNET = 0x40000000


def _enter_namespace(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{ns}") as f:
        if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")


class NamespaceThread:
    """One thread of this process moved into namespace `ns`: what `call` runs there opens its
    sockets in the namespace (a socket belongs to the namespace it was created in), so a test can
    use httpx against a node's API inside the lab without starting a process per request.

    setns(CLONE_NEWNET) moves only the calling thread; the rest of the process stays where it is.
    Close it before the lab goes: a thread inside keeps the namespace alive.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix=f"in-{ns}", initializer=_enter_namespace, initargs=(ns,)
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` run on the thread inside the namespace; its result or exception."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class UdpFrame:
    """One IPv4 UDP datagram as a capture saw it on the wire."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def udp_frames(pcap: bytes) -> list[UdpFrame]:
    """The IPv4 UDP datagrams in a capture's pcap bytes (a record cut short at the end is skipped)."""
    frames: list[UdpFrame] = []
    at = 24  # past the pcap file header
    while at + 16 <= len(pcap):
        length = struct.unpack_from("<I", pcap, at + 8)[0]
        frame = pcap[at + 16 : at + 16 + length]
        at += 16 + length
        if len(frame) < length or len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        udp = 14 + (frame[14] & 0x0F) * 4
        if len(frame) < udp + 8:
            continue
        sport, dport, size = struct.unpack_from("!HHH", frame, udp)
        frames.append(
            UdpFrame(_ipv4(frame[26:30]), sport, _ipv4(frame[30:34]), dport, frame[udp + 8 : udp + size])
        )
    return frames


def _ipv4(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


# Runs inside a namespace: a pcap writer over a raw socket on all links. SIGTERM ends the loop,
# then the frames the kernel still holds are written too, so nothing sent before the stop is lost.
_CAPTURE = r"""
import signal, socket, struct, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.settimeout(0.1)
with open(sys.argv[1], "wb", buffering=0) as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    print("ready", flush=True)
    while True:
        if stop:
            s.setblocking(False)
        try:
            frame = s.recv(262144)
        except (socket.timeout, BlockingIOError):
            if stop:
                break
            continue
        now = time.time()
        f.write(struct.pack("<IIII", int(now), int(now % 1 * 1e6), len(frame), len(frame)) + frame)
"""
