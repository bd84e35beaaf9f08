"""LAN discovery over mDNS between two network namespaces joined by a veth pair.

Loopback has no multicast, so the publisher and the finder sit on either side of a veth link
(a real Ethernet-like path, as between two machines on a LAN). Neither namespace can reach any
relay: whatever they find, they found on the LAN. Needs root and iproute2; the namespaces and
every process are removed afterwards, also after a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, NodeProcess

# Namespace names are global to the machine: unique to this run, so two runs can share one.
# (The veth ends and addresses live inside the namespaces and cannot collide.)
_RUN = f"{os.getpid()}-{secrets.token_hex(2)}"
NS_A, NS_B = f"mesh-disc-a-{_RUN}", f"mesh-disc-b-{_RUN}"
IP_A, IP_B = "10.202.0.1", "10.202.0.2"
FAST = "publish_interval=1,client_retry=1,lan_wait=1,relay_timeout=2"
NO_RELAY = "ws://127.0.0.1:9"  # nothing listens there inside a namespace

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for network namespaces"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _remove() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def lan() -> Iterator[None]:
    try:
        _ip("netns", "add", NS_A)
        _ip("netns", "add", NS_B)
        _ip("link", "add", "md-a", "netns", NS_A, "type", "veth", "peer", "name", "md-b", "netns", NS_B)
        for ns, dev, ip in ((NS_A, "md-a", IP_A), (NS_B, "md-b", IP_B)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        yield
    finally:
        _remove()


def in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def run_in(ns: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*in_ns(ns), sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def lan_listings(ns: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*in_ns(ns), sys.executable, "-m", "mesh_llm", "discover", "--json", "--no-nostr", "--lan-wait", "2"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_a_mesh_published_on_one_host_is_found_and_joined_from_the_other(lan: None, tmp_path: Path) -> None:
    a = NodeProcess(
        ["--model", "SmolLM2-135M", "--publish", "--mesh-name", "lan-lab", "--nostr-relay", NO_RELAY,
         "--discovery-timing", FAST],
        tmp_path / "a", prefix=in_ns(NS_A),
    ).start()  # fmt: skip
    c: NodeProcess | None = None
    try:
        deadline = time.monotonic() + 90
        rows: list[dict[str, Any]] = []
        while not rows and time.monotonic() < deadline:
            rows = [r for r in lan_listings(NS_B) if r.get("name") == "lan-lab" and r["serving"]]
        assert rows, f"no LAN listing seen from the other namespace\n{a.log()}"
        assert rows[0]["source"] == "lan" and any(addr.startswith(IP_A) for addr in _addresses(rows[0]))

        began = time.monotonic()
        c = NodeProcess(
            ["--client", "--mesh-name", "LAN-lab", "--nostr-relay", NO_RELAY, "--discovery-timing", FAST],
            tmp_path / "c", prefix=in_ns(NS_B),
        ).start()  # fmt: skip
        chat = f"""
import time, httpx
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        r = httpx.post("http://127.0.0.1:{c.api_port}/v1/chat/completions", timeout=60,
                       json={{"model": "SmolLM2-135M", "max_tokens": 8,
                              "messages": [{{"role": "user", "content": "Say hello."}}]}})
        if r.status_code == 200:
            print(r.json()["choices"][0]["message"]["content"]); break
    except httpx.HTTPError:
        pass
    time.sleep(0.3)
else:
    raise SystemExit("no answer")
s = httpx.get("http://127.0.0.1:{c.console_port}/api/status").json()
print("JOINED", s["discovery"]["joined"]["source"])
"""
        out = run_in(NS_B, chat, timeout=120)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- A ---\n{a.log()}\n--- C ---\n{c.log()}"
        assert "JOINED lan" in out.stdout
        print(f"LAN: --client --mesh-name answered a chat {time.monotonic() - began:.1f} s after start")
    finally:
        for node in (c, a):
            if node is not None:
                node.stop()


def _addresses(row: dict[str, Any]) -> tuple[str, ...]:
    from mesh_llm.peer.token import InviteToken

    return InviteToken.decode(row["invite_token"]).addresses
