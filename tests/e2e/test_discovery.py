"""Discovery end to end: real nodes, a real Nostr relay on 127.0.0.1 (never a public one).

Periods are shortened through the hidden --discovery-timing flag; every wait is on a condition
with a deadline, never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mesh_llm.discovery._nostr import check_event_json
from mesh_llm.errors import ListingError
from mesh_llm.peer.token import new_mesh
from tests.harness import REPO, NodeProcess, stop_all
from tests.nostr_relay import LocalNostrRelay, dead_relay_url, tamper

CHAT = [{"role": "user", "content": "Say hello."}]
FAST = "publish_interval=1,converge=1,takeover=1,client_retry=1,lan_wait=1,relay_timeout=3"
STANDBY = ["--max-vram", "0.05"]  # too little memory for any model: a node that never loads one


@pytest.fixture(scope="module")
def relay() -> Iterator[LocalNostrRelay]:
    r = LocalNostrRelay().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        stop_all(started)


def start(nodes: list[NodeProcess], args: list[str], state: Path) -> NodeProcess:
    """A node on the test's relay only: the machine's real LAN is not ours to advertise on (the
    LAN path is tested between network namespaces, in test_discovery_lan.py)."""
    node = NodeProcess([*args, "--no-lan"], state).start()
    nodes.append(node)
    return node


def discover(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mesh_llm", "discover", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )  # fmt: skip


def listed(relay: LocalNostrRelay, *extra: str) -> list[dict[str, Any]]:
    out = discover("--json", "--no-lan", "--nostr-relay", relay.url, *extra)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def discovery(node: NodeProcess) -> dict[str, Any]:
    return dict(node.status()["discovery"] or {})


def test_published_mesh_is_discovered_joined_by_a_client_and_delisted_when_full(
    relay: LocalNostrRelay, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    a = start(nodes, ["--model", "SmolLM2-135M", "--publish", "--region", "eu", "--max-clients", "1",
                      "--nostr-relay", relay.url, "--discovery-timing", FAST], tmp_path / "a")  # fmt: skip
    assert "public:" in wait_until(lambda: a.log(), 30, "the public warning") or "public:" in a.log()
    a.wait_serving()
    mesh_id = a.status()["mesh_id"]
    # --no-lan: the warning names the relay alone, and nothing is advertised over mDNS.
    assert "and the LAN" not in a.log() and discovery(a)["lan"] == {
        "enabled": False,
        "advertised": False,
        "error": None,
    }
    a.wait_for(lambda s: "SmolLM2-135M" in ((s["discovery"] or {}).get("listing") or {}).get("serving", []),
               60, "a listing that serves the model")  # fmt: skip
    rows = wait_until(
        lambda: [r for r in listed(relay) if r["mesh_id"] == mesh_id and r["serving"]], 30, "discover"
    )
    assert rows[0]["region"] == "eu" and rows[0]["node_count"] == 1 and rows[0]["source"] == "nostr"
    table = discover("--no-lan", "--nostr-relay", relay.url, "--region", "EU", "--model", "smollm")
    assert table.returncode == 0 and mesh_id[:8] in table.stdout and "public" in table.stdout
    assert mesh_id[:8] not in discover("--no-lan", "--nostr-relay", relay.url, "--region", "us").stdout

    began = time.monotonic()
    c = start(
        nodes, ["--client", "--auto", "--nostr-relay", relay.url, "--discovery-timing", FAST], tmp_path / "c"
    )
    c.wait_for(
        lambda s: s["mesh_id"] == mesh_id and any(m["ready"] for m in s["models"]), 60, "C in A's mesh"
    )
    client = openai.OpenAI(base_url=f"{c.api}/v1", api_key="x", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="SmolLM2-135M", messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    print(f"--client --auto: first chat answered {time.monotonic() - began:.1f} s after start")
    assert c.status()["discovery"]["joined"]["mesh_id"] == mesh_id and c.children() == []

    # One client connected and --max-clients 1: the mesh is taken down from the relay.
    a.wait_for(lambda s: (s["discovery"] or {}).get("delisted"), 30, "A to delist")
    wait_until(lambda: not [r for r in listed(relay) if r["mesh_id"] == mesh_id], 30, "the listing to go")
    c.stop()
    a.wait_for(lambda s: (s["discovery"] or {}).get("published"), 30, "A to list the mesh again")
    wait_until(lambda: [r for r in listed(relay) if r["mesh_id"] == mesh_id], 30, "the listing to come back")


def test_two_nodes_with_one_mesh_name_end_as_one_mesh(
    relay: LocalNostrRelay, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    args = ["--mesh-name", "Lab-Converge", *STANDBY, "--nostr-relay", relay.url, "--discovery-timing", FAST]
    began = time.monotonic()
    b1 = start(nodes, args, tmp_path / "b1")
    b2 = start(nodes, [*args[:1], "lab-converge", *args[2:]], tmp_path / "b2")  # names match in any case

    for b in (b1, b2):
        b.wait_for(lambda s: True, 30, "the console")

    def one_mesh() -> bool:
        s1, s2 = b1.status(), b2.status()
        return (
            bool(s1["mesh_id"])
            and s1["mesh_id"] == s2["mesh_id"]
            and len(s1["peers"]) == len(s2["peers"]) == 1
        )

    wait_until(one_mesh, 90, "the two to converge into one mesh")
    print(f"two --mesh-name nodes converged {time.monotonic() - began:.1f} s after start")
    mesh_id = b1.status()["mesh_id"]
    rows = wait_until(
        lambda: [r for r in listed(relay) if r.get("name", "").lower() == "lab-converge" and r["node_count"] == 2],
        30, "the merged mesh's listing",
    )  # fmt: skip
    assert {r["mesh_id"] for r in rows} == {mesh_id}
    wait_until(  # the mesh that moved took its listing down before moving
        lambda: not [
            r for r in listed(relay) if r.get("name", "").lower() == "lab-converge" and r["mesh_id"] != mesh_id
        ],
        30, "the other mesh's listing to go",
    )  # fmt: skip


def test_a_member_takes_over_publishing_when_the_publisher_leaves(
    relay: LocalNostrRelay, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    a = start(nodes, ["--publish", *STANDBY, "--nostr-relay", relay.url,
                      "--discovery-timing", FAST], tmp_path / "a")  # fmt: skip
    a.wait_for(lambda s: (s["discovery"] or {}).get("published"), 60, "A to publish")
    mesh_id = a.status()["mesh_id"]
    b = start(nodes, ["--auto", *STANDBY, "--nostr-relay", relay.url, "--discovery-timing", FAST + ",alone=600"],
              tmp_path / "b")  # fmt: skip
    b.wait_for(lambda s: s["mesh_id"] == mesh_id and s["peers"], 60, "B to join A's mesh")
    # No assertion that B is not publishing yet: on a loaded machine A can look gone for a
    # moment and B rightly takes over early. What must hold is what follows A's leaving.
    a.stop()
    left = time.monotonic()
    b_id = b.status()["node_id"]
    b.wait_for(lambda s: (s["discovery"] or {}).get("took_over") and s["discovery"].get("published"), 60,
               "B to take over")  # fmt: skip
    print(f"takeover: B published the mesh {time.monotonic() - left:.1f} s after A left")
    # The listing that stays is B's: its token invites through B, the member still there.
    wait_until(
        lambda: {_token_node(r["invite_token"]) for r in listed(relay) if r["mesh_id"] == mesh_id} == {b_id},
        30, "B's listing, and A's gone",
    )  # fmt: skip
    assert "taking over publishing" in b.log()


def _token_node(token: str) -> str:
    from mesh_llm.peer.token import InviteToken

    return InviteToken.decode(token).node_id


def test_expired_badly_signed_and_bad_token_listings_are_ignored(relay: LocalNostrRelay) -> None:
    token = new_mesh().invite("cd" * 32, ["127.0.0.1:4000"])
    good = {"invite_token": token.encode(), "mesh_id": token.mesh_id.hex(), "name": "ignored-test"}
    # A listing that expires in 2 s: the relay still holds it afterwards, discovery must not list it.
    expiring = relay.listing_event(json.dumps(good), expires_in_s=2)
    assert relay.send(expiring)[0]
    bad_token = relay.listing_event(json.dumps(good | {"invite_token": "AQCNgarbage"}))
    assert relay.send(bad_token)[0]
    tampered = tamper(relay.listing_event(json.dumps(good)), content=json.dumps(good | {"name": "forged"}))
    with pytest.raises(ListingError, match="signature"):
        check_event_json(tampered, now=time.time(), source="nostr", where="test")
    forged = relay.listing_event(json.dumps(good))
    unsigned = tamper(forged, sig="00" * 64)
    with pytest.raises(ListingError, match="signature"):
        check_event_json(unsigned, now=time.time(), source="nostr", where="test")
    # The relay itself refuses a badly signed event, so it never reaches a reader through it.
    import nostr_sdk as ns

    with pytest.raises(Exception, match=r"(?i)invalid|signature"):
        relay.send(ns.Event.from_json(tampered))
    wait_until(lambda: time.time() > _expiry(expiring) + 1, 10, "the listing to expire")
    rows = listed(relay)
    assert not [r for r in rows if r.get("name") in ("ignored-test", "forged")]
    out = discover("--no-lan", "--nostr-relay", relay.url)
    assert re.search(r"ignored \d+ listing", out.stderr)


def _expiry(event: Any) -> int:
    return next(int(t.to_vec()[1]) for t in event.tags() if t.to_vec()[0] == "expiration")


def test_a_dead_relay_is_a_clear_message_and_the_node_keeps_serving(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    dead = dead_relay_url()
    out = discover("--no-lan", "--nostr-relay", dead, "--timeout", "2")
    assert out.returncode == 1 and "no Nostr relay answered" in out.stderr and dead in out.stderr
    began = time.monotonic()
    a = start(nodes, ["--model", "SmolLM2-135M", "--publish", "--nostr-relay", dead, "--discovery-timing", FAST],
              tmp_path / "a")  # fmt: skip
    # Discovery never delays start-up: the API answers while the relay is still being tried.
    wait_until(lambda: _answers(a), 30, "the API")
    print(f"API up {time.monotonic() - began:.1f} s after start with a dead relay")
    s = a.wait_for(lambda s: (s["discovery"] or {}).get("error"), 60, "the relay error")
    assert "no Nostr relay took the listing" in s["discovery"]["error"] and dead in s["discovery"]["error"]
    assert next(r for r in s["discovery"]["relays"] if r["url"] == dead)["ok"] is False
    a.wait_serving()
    reply = openai.OpenAI(
        base_url=f"{a.api}/v1", api_key="x", max_retries=0, timeout=60
    ).chat.completions.create(
        model="SmolLM2-135M",
        messages=CHAT,
        max_tokens=8,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content
    assert "no Nostr relay took the listing" in a.log() and "keeps serving" in a.log()


def _answers(node: NodeProcess) -> bool:
    try:
        return httpx.get(f"{node.api}/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
