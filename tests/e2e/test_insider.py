"""Attacks by a mesh member: an insider built from the project's own mesh service, joined with
a valid token, lies in its own (signed) record and relays forged records about others."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from mesh_llm.mesh.gossip import GossipConfig, NodeRecord
from mesh_llm.mesh.service import MeshService, MeshSettings, MeshTimings, record_for
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import InviteToken
from mesh_llm.transport import TransportConfig
from tests.harness import NodeProcess, wait_gone


async def _insider(token: str, state: Path, extra: dict) -> MeshService:  # type: ignore[type-arg]
    decoded = InviteToken.decode(token)
    identity = NodeIdentity.generate()
    record = record_for(identity.node_id, "0.1.0", role="standby", capacity_bytes=10**12, extra=extra)
    service = MeshService(
        identity,
        decoded.credentials,
        MeshSettings(
            state, join=(token,), gossip=GossipConfig(), transport=TransportConfig(), timing=MeshTimings()
        ),
        record,
        tokens=[decoded],
    )
    await service.start()
    return service


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_an_insider_cannot_delete_folders_start_workers_or_forge_others(tmp_path: Path) -> None:
    a = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "a").start()
    b = None
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--join", token], tmp_path / "b").start()
        a_id = a.status()["node_id"]
        b_id = b.wait_for(lambda s: len(s["peers"]) == 1, 30, "B to join")["node_id"]
        claim = {"epoch": 1, "mode": "split", "settled": False, "state": "serving", "force": True,
                 "n_layers": 30, "shards": [["f" * 64, 0, 15], [a_id, 15, 30]]}  # fmt: skip
        extra = {"splits": {str(victim): claim, "SmolLM2-135M": {**claim, "epoch": 2}}}

        async def attack() -> None:
            m = await _insider(token, tmp_path / "m", extra)
            try:
                deadline = time.monotonic() + 30
                while a_id not in m.peers() or b_id not in m.peers():
                    assert time.monotonic() < deadline, "the insider never saw the mesh"
                    await asyncio.sleep(0.1)
                # Forge B's record (more capacity, a different role) and a goodbye for B.
                real: NodeRecord = m.peers()[b_id].record
                forged = {
                    **real.to_dict(),
                    "version": real.version + 9,
                    "capacity_bytes": 1,
                    "role": "client",
                }
                link = m.transport.link(a_id)
                assert link is not None
                link.send({"t": "records", "records": [{"r": forged, "age_ms": 0}]})
                link.send(
                    {
                        "t": "digest",
                        "entries": [],
                        "gone": [[b_id, real.incarnation, 60_000, "ab" * 64]],
                        "ask": False,
                    }
                )
                await asyncio.sleep(4)  # several reconcile and gossip rounds on A
                during.append({**await asyncio.to_thread(a.status), "insider": m.identity.node_id})
            finally:
                await m.stop()

        during: list[dict] = []  # type: ignore[type-arg]
        asyncio.run(attack())
        (s,) = during  # A's view while the insider was still in the mesh
        # The folder named by the gossiped "model" is untouched, and A runs no worker for M.
        assert (victim / "keep.txt").read_text() == "precious"
        # A holds layers for nobody but the host its own election picks (a member may ask for a
        # split, and the elected host may then use A: that is membership), never for the insider.
        assert all(w["host"] != s["insider"] for w in s["worker_of"])
        assert all(w["model"] == "SmolLM2-135M" for w in s["worker_of"])
        # B is still in A's view, with its own record.
        (peer_b,) = [p for p in s["peers"] if p["node_id"] == b_id]
        assert peer_b["state"] == "alive" and peer_b["capacity_bytes"] > 1 and peer_b["role"] != "client"
        # And A still answers.
        assert httpx.get(f"{a.api}/v1/models", timeout=10).status_code == 200
        log = a.log()
        assert "not signed by that node" in log and "elects another host" in log
        assert "crashed" not in log  # no background loop died on the way
    finally:
        for node in (b, a):
            if node is not None:
                pids = [c.pid for c in node.children()]
                node.stop()
                assert wait_gone(pids) == []


def test_an_unhashable_value_in_an_insiders_claim_does_not_take_a_node_down(tmp_path: Path) -> None:
    # The fuzzer's find (issue 25): `"mode": []` in the member's own signed record made every
    # reader of split claims raise TypeError; status and chat answered 500 while it lived.
    a = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "a").start()
    try:
        token = a.wait_serving()["invite_token"]
        a_id = a.status()["node_id"]
        claim = {"epoch": 1, "mode": [], "settled": True, "state": "serving", "force": False,
                 "n_layers": 30, "shards": [[a_id, 0, 30]]}  # fmt: skip
        extra = {"splits": {"SmolLM2-135M": claim, "other": {**claim, "mode": {"x": 1}}}}
        answers: list[int] = []

        async def attack() -> None:
            m = await _insider(token, tmp_path / "m", extra)
            try:
                deadline = time.monotonic() + 30
                while a_id not in m.peers():
                    assert time.monotonic() < deadline, "the insider never joined"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(3)  # several advertise and reconcile rounds on A
                async with httpx.AsyncClient(timeout=60) as http:
                    answers.append((await http.get(f"{a.api}/api/status")).status_code)
                    body = {"model": "SmolLM2-135M", "max_tokens": 4,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                    answers.append((await http.post(f"{a.api}/v1/chat/completions", json=body)).status_code)
            finally:
                await m.stop()

        asyncio.run(attack())
        assert answers == [200, 200]
        log = a.log()
        assert "malformed split claim" in log and "crashed" not in log and "TypeError" not in log
    finally:
        pids = [c.pid for c in a.children()]
        a.stop()
        assert wait_gone(pids) == []
