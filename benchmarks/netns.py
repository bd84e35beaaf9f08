"""Two network namespaces joined by a veth pair: a real non-loopback path on one machine.

    host side  mesh-bench-a  10.201.0.1/24  ==veth (MTU 1500)==  10.201.0.2/24  mesh-bench-b  worker side

Packets between them cross a real Ethernet-like interface with a 1500-byte MTU and a directly
attached route, as between two machines on a LAN (minus the wire's own latency). Needs root
(or CAP_NET_ADMIN) and iproute2. The namespaces are removed on exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

HOST_NS, WORKER_NS = "mesh-bench-a", "mesh-bench-b"
HOST_IP, WORKER_IP = "10.201.0.1", "10.201.0.2"
MTU = 1500


@dataclass(frozen=True)
class Pair:
    host_ns: str = HOST_NS
    worker_ns: str = WORKER_NS
    host_ip: str = HOST_IP
    worker_ip: str = WORKER_IP
    mtu: int = MTU

    def prefix(self, ns: str) -> list[str]:
        """The command prefix that runs a program inside namespace `ns`."""
        return ["ip", "netns", "exec", ns]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _remove() -> None:
    for ns in (HOST_NS, WORKER_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def veth_pair() -> Iterator[Pair]:
    """Create the two namespaces and the veth pair between them; remove them afterwards."""
    _remove()  # leftovers of an interrupted run
    try:
        _ip("netns", "add", HOST_NS)
        _ip("netns", "add", WORKER_NS)
        _ip(
            "link",
            "add",
            "mb-a",
            "netns",
            HOST_NS,
            "type",
            "veth",
            "peer",
            "name",
            "mb-b",
            "netns",
            WORKER_NS,
        )
        for ns, dev, ip in ((HOST_NS, "mb-a", HOST_IP), (WORKER_NS, "mb-b", WORKER_IP)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "mtu", str(MTU))
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        _remove()
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        sys.exit(f"cannot create network namespaces (needs root and iproute2): {detail}")
    try:
        yield Pair()
    finally:
        _remove()


def rerun_in_host_namespace(module: str, argv: list[str]) -> None:
    """Create the pair, run `python -m module *argv` in the host namespace, exit with its code."""
    with veth_pair() as pair:
        code = subprocess.run([*pair.prefix(pair.host_ns), sys.executable, "-m", module, *argv]).returncode
    sys.exit(code)
