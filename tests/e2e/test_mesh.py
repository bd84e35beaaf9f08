"""Three real processes on loopback: a host, a joined standby and a client, over authenticated QUIC.

The host and the standby run the default QUIC engine (qh3), the client runs aioquic: every
request the client forwards crosses engines.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from mesh_llm.peer.token import InviteToken, new_mesh
from tests.harness import NodeProcess, stop_all, wait_gone

CHAT = [{"role": "user", "content": "Say hello."}]


def peer_ids(node: NodeProcess) -> set[str]:
    return {p["node_id"] for p in node.status()["peers"]}


def sees_ready_model(status: dict) -> bool:  # type: ignore[type-arg]
    return any(m["name"] == "SmolLM2-135M" and m["ready"] for m in status["models"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    root = tmp_path_factory.mktemp("mesh")
    a = NodeProcess(["--model", "SmolLM2-135M"], root / "a").start()
    nodes = {"a": a}
    try:
        token = a.wait_serving()["invite_token"]
        # B offers too little memory for any model, so it stays a standby and never takes A's model.
        nodes["b"] = NodeProcess(["--join", token, "--max-vram", "0.05"], root / "b").start()
        nodes["c"] = NodeProcess(["--client", "--join", token, "--quic", "aioquic"], root / "c").start()
        for name in ("b", "c"):
            nodes[name].wait_for(sees_ready_model, 30, f"{name} to see A's model")
        a.wait_for(lambda s: len(s["peers"]) == 2, 30, "A to see both peers")
        yield nodes
    finally:
        stop_all(nodes.values())


def test_token_is_in_status_and_printed(mesh: dict[str, NodeProcess]) -> None:
    a = mesh["a"]
    token = a.status()["invite_token"]
    decoded = InviteToken.decode(token)
    assert decoded.node_id == a.status()["node_id"]
    assert any(addr.startswith("127.0.0.1:") for addr in decoded.addresses)
    assert token in a.log()


def test_requests_to_client_and_standby_are_answered_by_the_host(mesh: dict[str, NodeProcess]) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    before = a.status()["models"][0]["requests"]
    for node in (c, b):
        client = openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="SmolLM2-135M", messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert r.choices[0].message.content
        streamed = client.chat.completions.create(
            model="SmolLM2-135M",
            messages=CHAT,
            max_tokens=8,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        assert (
            "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
            == r.choices[0].message.content
        )
    # Neither B nor C runs a model server: the answers came from A's.
    assert b.children() == [] and c.children() == []
    assert c.status()["requests_total"] == 2 and b.status()["requests_total"] == 2
    assert a.status()["models"][0]["requests"] == before  # A's own proxy was not involved


def test_a_node_on_aioquic_and_nodes_on_qh3_are_one_mesh(mesh: dict[str, NodeProcess]) -> None:
    a, c = mesh["a"], mesh["c"]
    assert a.status()["quic"].startswith("qh3 ") and c.status()["quic"].startswith("aioquic ")
    assert c.status()["node_id"] in peer_ids(a) and a.status()["node_id"] in peer_ids(c)
    reply = openai.OpenAI(base_url=f"{c.api}/v1", api_key="x").chat.completions.create(
        model="SmolLM2-135M", messages=CHAT, max_tokens=8
    )
    assert reply.choices[0].message.content


def test_models_on_the_client_lists_the_mesh_model_and_its_host(mesh: dict[str, NodeProcess]) -> None:
    a, c = mesh["a"], mesh["c"]
    data = httpx.get(f"{c.api}/v1/models").json()["data"]
    assert [(m["id"], m["hosts"], m["ready"]) for m in data] == [
        ("SmolLM2-135M", [a.status()["short_id"]], True)
    ]


def test_client_is_an_api_only_member(mesh: dict[str, NodeProcess]) -> None:
    a, c = mesh["a"], mesh["c"]
    cs = c.status()
    assert (
        cs["role"] == "client" and cs["capacity"]["offered_bytes"] == 0 and cs["models"][0]["local"] is False
    )
    (seen,) = [p for p in a.status()["peers"] if p["node_id"] == cs["node_id"]]
    assert (
        seen["client"] is True
        and seen["capacity_bytes"] == 0
        and seen["models"] == []
        and seen["role"] == "client"
    )


def test_status_lists_peers_with_rtt_and_version(mesh: dict[str, NodeProcess]) -> None:
    b = mesh["b"]
    peers = b.status()["peers"]
    assert {p["role"] for p in peers} == {"host", "client"}
    for p in peers:
        # RTT and staleness are load-sensitive: check they are measured, not how big they are.
        assert p["state"] == "alive" and p["version"] == "0.1.0"
        assert isinstance(p["rtt_ms"], int | float) and p["rtt_ms"] > 0
        assert isinstance(p["last_seen_s"], int | float) and p["last_seen_s"] >= 0


def test_a_token_with_the_wrong_secret_is_refused(mesh: dict[str, NodeProcess], tmp_path: Path) -> None:
    a = mesh["a"]
    real = InviteToken.decode(a.status()["invite_token"])
    forged = new_mesh().invite(real.node_id, real.addresses)  # right address and node id, wrong mesh
    assert forged.mesh_id != real.mesh_id
    intruder = NodeProcess(["--client", "--join", forged.encode()], tmp_path / "x").start()
    try:
        intruder.wait_for(lambda s: s["state"] == "client", 30, "the intruder to start")
        # Both sides say so at the default log level: the dialer names the refusal, A the intruder.
        deadline = time.monotonic() + 30
        while "could not join through inviter" not in intruder.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"could not join through inviter {real.node_id[:8]}" in intruder.log()
        assert "refused us" in intruder.log() and "different mesh" in intruder.log()
        assert "refused" in a.log() and "another mesh" in a.log()
        assert intruder.status()["peers"] == []
        assert intruder.status()["models"] == []
        assert intruder.status()["node_id"] not in peer_ids(a)
        r = httpx.post(
            f"{intruder.api}/v1/chat/completions", json={"model": "SmolLM2-135M", "messages": CHAT}
        )
        # Not "no such model": the intruder is told that it never reached the mesh, and why.
        assert r.status_code == 503, r.text
        assert "has not reached its mesh yet" in r.json()["error"]["message"]
        assert "refused" in r.json()["error"]["message"]
    finally:
        intruder.stop()


def test_malformed_token_is_a_clear_cli_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "mesh_llm", "--join", "AQCNc4mf-truncated", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--join token 1 is not valid" in r.stderr


def test_kill_9_host_is_dropped_within_10s_then_503_then_rejoins(mesh: dict[str, NodeProcess]) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    a_id = a.status()["node_id"]
    model_pid = a.status()["models"][0]["pid"]
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    a.proc.wait(10)  # reap it: a zombie would show up as a leftover in later modules' checks
    for node in (b, c):
        node.wait_for(lambda s: a_id not in {p["node_id"] for p in s["peers"]}, 10, "A to be dropped")
    dropped_after = time.monotonic() - killed_at
    assert dropped_after < 10
    assert wait_gone([model_pid]) == [], "A's model server outlived it"
    r = httpx.post(f"{c.api}/v1/chat/completions", json={"model": "SmolLM2-135M", "messages": CHAT})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    assert "no node in the mesh serves it" in r.json()["error"]["message"]

    # The same node comes back (same state dir: same key, same mesh) and service resumes.
    restarted = NodeProcess(
        ["--model", "SmolLM2-135M"], a.state_dir, api_port=a.api_port, console_port=a.console_port
    )
    mesh["a"] = restarted.start()
    assert restarted.wait_serving()["node_id"] == a_id
    c.wait_for(sees_ready_model, 30, "C to see A's model again")
    client = openai.OpenAI(base_url=f"{c.api}/v1", api_key="x", max_retries=0, timeout=60)
    assert (
        client.chat.completions.create(model="SmolLM2-135M", messages=CHAT, max_tokens=4)
        .choices[0]
        .message.content
    )  # type: ignore[arg-type]
    restarted.wait_for(lambda s: len(s["peers"]) == 2, 30, "A to see both peers again")


def test_clean_exit_says_goodbye_and_disappears_at_once(mesh: dict[str, NodeProcess]) -> None:
    b, c = mesh["b"], mesh["c"]
    b_id = b.status()["node_id"]
    assert b_id in peer_ids(c)
    b.stop()
    t0 = time.monotonic()
    c.wait_for(lambda s: b_id not in {p["node_id"] for p in s["peers"]}, 3, "B's goodbye")
    assert time.monotonic() - t0 < 2


def test_two_hosts_share_requests_and_a_dying_host_loses_none(tmp_path: Path) -> None:
    a = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--model", "SmolLM2-135M", "--join", token], tmp_path / "b").start()
        c = NodeProcess(["--client", "--join", token], tmp_path / "c").start()
        nodes += [b, c]
        b.wait_serving()
        c.wait_for(lambda s: len([m for m in s["models"] if m["ready"]]) == 2, 30, "both hosts on C")
        client = openai.OpenAI(base_url=f"{c.api}/v1", api_key="x", max_retries=0, timeout=60)
        for _ in range(6):
            client.completions.create(model="SmolLM2-135M", prompt="Hi", max_tokens=2)
        routed = {m["host"]: m["requests"] for m in c.status()["models"]}
        assert sorted(routed.values()) == [3, 3], routed
        ids = sorted(routed)
        assert data_hosts(c) == sorted(i[:8] for i in ids)
        # B dies without a word: requests sent right after must all still be answered (by A).
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)
        for _ in range(8):
            r = client.completions.create(model="SmolLM2-135M", prompt="Hi", max_tokens=2)
            assert r.choices[0].text is not None
    finally:
        stop_all(nodes)


def data_hosts(node: NodeProcess) -> list[str]:
    (card,) = httpx.get(f"{node.api}/v1/models").json()["data"]
    return list(card["hosts"])
