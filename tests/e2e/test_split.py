"""Split inference across real nodes: RPC workers reached only through the authenticated mesh."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.gguf_fixtures import write_wide_llama_gguf
from tests.harness import NodeProcess, smollm2_path, stop_all

# One 256-token slot: 6 MB of KV cache next to SmolLM2's 98 MB, so the tiny --max-vram figures
# below still force the splits they describe.
SMALL_KV = ["--ctx-size", "256", "--parallel", "1"]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]


def split_row(node: NodeProcess) -> dict:  # type: ignore[type-arg]
    (row,) = [m for m in node.status()["models"] if m["local"]]
    return dict(row)


def is_split_and_ready(members: int):  # type: ignore[no-untyped-def]
    def check(s: dict) -> bool:  # type: ignore[type-arg]
        rows = [m for m in s["models"] if m["local"]]
        return (
            bool(rows)
            and rows[0].get("mode") == "split"
            and rows[0]["ready"]
            and len(rows[0]["shards"]) == members
        )

    return check


def complete(node: NodeProcess, model: str, prompt: str) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
    r = httpx.post(f"{node.api}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


@pytest.fixture(scope="module")
def solo_outputs() -> list[str]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_path()), n_ctx=4096, verbose=False)
    return [
        llm.create_completion(p, max_tokens=16, temperature=0)["choices"][0]["text"]  # type: ignore[index]
        for p in PROMPTS
    ]


def test_forced_two_node_split_matches_solo_and_replans_when_the_worker_dies(
    tmp_path: Path, solo_outputs: list[str]
) -> None:
    a = NodeProcess(["--split", "--model", "SmolLM2-135M"], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]  # alone, a forced split serves solo
        assert split_row(a)["mode"] == "solo"
        b = NodeProcess(["--join", token], tmp_path / "b").start()
        nodes.append(b)
        s = a.wait_for(is_split_and_ready(2), 60, "a two-node split")
        row = split_row(a)
        a_id, b_id = a.status()["node_id"], b.status()["node_id"]
        assert [(sh["node_id"], sh["start_layer"], sh["end_layer"]) for sh in row["shards"]] == [
            (a_id, 0, 15), (b_id, 15, 30),
        ]  # fmt: skip
        assert s["state"] == "serving"
        bs = b.status()
        assert bs["role"] == "worker" and bs["worker_of"][0]["layers"] == [15, 30]
        # The RPC worker listens on loopback only; the host reaches it through the QUIC tunnel.
        port = bs["worker_of"][0]["port"]
        listening = [
            c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
        assert [complete(a, "SmolLM2-135M", p) for p in PROMPTS] == solo_outputs
        assert row["shards"][1]["bytes_sent"] > 0
        # Only the host takes HTTP traffic: B's API routes to A.
        assert complete(b, "SmolLM2-135M", PROMPTS[0]) == solo_outputs[0]

        # The worker's node dies: A re-plans (a forced split with nobody left runs solo) and serves again.
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)
        a.wait_for(
            lambda s: split_row_of(s).get("mode") == "solo" and split_row_of(s)["ready"], 60, "solo again"
        )
        assert complete(a, "SmolLM2-135M", PROMPTS[1]) == solo_outputs[1]
    finally:
        stop_all(nodes)


def split_row_of(status: dict) -> dict:  # type: ignore[type-arg]
    rows = [m for m in status["models"] if m["local"]]
    return dict(rows[0]) if rows else {}


def test_model_too_big_for_any_node_waits_then_splits_over_three(
    tmp_path: Path, solo_outputs: list[str]
) -> None:
    # 0.04 GiB each: SmolLM2 (98 MB x 1.1) fits no node, nor any two; all three hold it.
    a = NodeProcess(["--max-vram", "0.04", "--model", "SmolLM2-135M", *SMALL_KV], tmp_path / "a").start()
    nodes = [a]
    try:
        s = a.wait_for(lambda s: split_row_of(s).get("mode") == "waiting", 30, "waiting for capacity")
        assert "waiting for capacity" in split_row_of(s)["message"]
        r = httpx.post(f"{a.api}/v1/completions", json={"model": "SmolLM2-135M", "prompt": "Hi"})
        assert r.status_code == 503 and "waiting for capacity" in r.json()["error"]["message"]
        token = s["invite_token"]
        for name in ("b", "c"):
            nodes.append(
                NodeProcess(["--join", token, "--max-vram", "0.04", *SMALL_KV], tmp_path / name).start()
            )
        # All three offer the same: the host is the one with the smallest node id, A or not.
        s = a.wait_for(serving_split(3), 90, "a three-node split")
        ((host, members),) = split_hosts(s)
        ids = [n.status()["node_id"] for n in nodes]
        assert host == min(ids) == members[0] and sorted(members) == sorted(ids)
        (shards,) = [m["shards"] for m in s["models"] if m.get("mode") == "split"]
        assert shards[0]["start_layer"] == 0 and shards[-1]["end_layer"] == 30
        assert all(x["end_layer"] == y["start_layer"] for x, y in itertools.pairwise(shards))
        assert [complete(a, "SmolLM2-135M", p) for p in PROMPTS] == solo_outputs
    finally:
        stop_all(nodes)


def serving_split(members: int):  # type: ignore[no-untyped-def]
    """A check for `wait_for`: some node (this one or a peer) serves the model split `members` ways."""

    def check(s: dict) -> bool:  # type: ignore[type-arg]
        return any(
            m.get("mode") == "split" and m["ready"] and len(m.get("shards") or []) == members
            for m in s["models"]
        )

    return check


def split_hosts(status: dict) -> list[tuple[str, list[str]]]:  # type: ignore[type-arg]
    """The hosts of ready split models in a status, each with its members in layer order."""
    rows = [m for m in status["models"] if m.get("mode") == "split" and m["ready"]]
    return [(row["host"], [sh["node_id"] for sh in row["shards"]]) for row in rows]


def test_the_biggest_node_hosts_a_split_and_the_next_biggest_takes_over_when_it_dies(
    tmp_path: Path, solo_outputs: list[str]
) -> None:
    # SmolLM2 needs 115 MB with its KV cache and headroom: B (0.09 GiB = 97 MB) and C (75 MB) are both too small,
    # as is A (43 MB), the node asked to serve it; C and A together are enough.
    a = NodeProcess(["--max-vram", "0.04", "--model", "SmolLM2-135M", *SMALL_KV], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_for(lambda s: split_row_of(s).get("mode") == "waiting", 30, "A waiting")[
            "invite_token"
        ]
        b = NodeProcess(["--join", token, "--max-vram", "0.09", *SMALL_KV], tmp_path / "b").start()
        c = NodeProcess(["--join", token, "--max-vram", "0.07", *SMALL_KV], tmp_path / "c").start()
        nodes += [b, c]
        a_id, b_id, c_id = (n.wait_for(lambda s: True, 10, "status")["node_id"] for n in nodes)
        # The mesh elects B, the node with the most capacity, rather than A, which was asked.
        s = a.wait_for(serving_split(2), 90, "a split hosted by B")
        ((host, members),) = split_hosts(s)
        assert host == b_id and members[0] == b_id
        assert split_row(b)["mode"] == "split" and not [m for m in a.status()["models"] if m["local"]]
        # `mesh-llm plan` asked on A names the host the mesh elected, not A.
        r = subprocess.run(
            [sys.executable, "-m", "mesh_llm", "plan", "SmolLM2-135M", "--console", str(a.console_port)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert r.returncode == 0 and "SmolLM2-135M: split" in r.stdout, r.stdout + r.stderr
        (host_line,) = [line for line in r.stdout.splitlines() if " host " in line]
        assert b_id[:8] in host_line
        assert [complete(a, "SmolLM2-135M", p) for p in PROMPTS] == solo_outputs

        # B dies: C, with the next-most capacity, takes the model over and splits it with A.
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        gap = httpx.post(
            f"{a.api}/v1/completions", json={"model": "SmolLM2-135M", "prompt": "Hi"}, timeout=30
        )
        assert gap.status_code == 503, gap.text  # a clear "not now", never a hang or a 404
        s = a.wait_for(lambda s: [h for h, _ in split_hosts(s)] == [c_id], 60, "C hosting")
        took_over_s = time.monotonic() - t0
        assert split_hosts(s) == [(c_id, [c_id, a_id])]
        assert a.status()["role"] == "worker" and split_row(c)["epoch"] >= 2
        assert [complete(a, "SmolLM2-135M", p) for p in PROMPTS] == solo_outputs
        print(f"took over in {took_over_s:.1f} s")
    finally:
        stop_all(nodes)


def test_zero_transfer_loading_sends_under_one_percent_of_the_workers_share(tmp_path: Path) -> None:
    model = write_wide_llama_gguf(tmp_path / "wide.gguf")
    a = NodeProcess(["--split", "--model", str(model)], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        (tmp_path / "b" / "models").mkdir(parents=True)
        os.link(model, tmp_path / "b" / "models" / "wide.gguf")  # B has its own copy of the GGUF
        b = NodeProcess(["--join", token], tmp_path / "b").start()
        nodes.append(b)
        a.wait_for(is_split_and_ready(2), 60, "the wide model split")
        worker_share = split_row(a)["shards"][1]
        assert b.status()["worker_of"][0]["prefilled_files"] == 7
        sent = worker_share["bytes_sent"]
        assert sent < 0.01 * worker_share["bytes"], (sent, worker_share["bytes"])
        assert complete(a, "wide", "the a") is not None
        time.sleep(0.1)
    finally:
        stop_all(nodes)


def test_a_node_beyond_the_rtt_cap_is_left_out_of_splits_but_still_serves_the_api(
    tmp_path: Path, solo_outputs: list[str]
) -> None:
    from mesh_llm.peer.token import InviteToken, parse_address
    from tests.relay import DelayRelay

    a = NodeProcess(["--split", "--model", "SmolLM2-135M"], tmp_path / "a").start()
    nodes = [a]
    relay = None
    try:
        s = a.wait_serving()
        real = InviteToken.decode(s["invite_token"])
        mesh_port = parse_address(next(x for x in real.addresses if x.startswith("127.0.0.1:")))[1]
        relay = DelayRelay(("127.0.0.1", mesh_port), delay_s=0.06).start()  # 120 ms round trip
        far = real.credentials.invite(real.node_id, (f"127.0.0.1:{relay.port}",))
        x = NodeProcess(["--join", far.encode()], tmp_path / "x").start()
        nodes.append(x)
        x_id = x.wait_for(lambda s: any(m["ready"] for m in s["models"]), 60, "X to see the model")["node_id"]
        seen = a.wait_for(
            lambda s: any(p["node_id"] == x_id and p["rtt_ms"] for p in s["peers"]), 30, "A to see X"
        )
        (far_peer,) = [p for p in seen["peers"] if p["node_id"] == x_id]
        assert far_peer["rtt_ms"] > 80
        time.sleep(3)  # several planning rounds: X has the model on disk but is too far
        assert split_row(a)["mode"] == "solo"
        b = NodeProcess(["--join", s["invite_token"]], tmp_path / "b").start()
        nodes.append(b)
        a.wait_for(is_split_and_ready(2), 60, "a split with the near node")
        members = [sh["node_id"] for sh in split_row(a)["shards"]]
        assert x_id not in members and b.status()["node_id"] in members
        # X stays an API member of the mesh: its :9337 answers through the slow link.
        assert complete(x, "SmolLM2-135M", PROMPTS[0]) == solo_outputs[0]
    finally:
        stop_all(nodes)
        if relay is not None:
            relay.stop()


def _padded_prompts(n: int) -> list[str]:
    """``n`` prompts of their own, each 257 tokens long: one more than the engine's 256-token
    prefill chunk, so a cold prefill decodes the last token alone, as a restore does; the two
    then take the same kernels and must give the same greedy answer."""
    from mesh_llm.serving.engine import Model

    model = Model(smollm2_path())
    prompts = []
    try:
        for i in range(n):
            facts = " ".join(f"Project {i} rule {k}: value {k * (i + 3)}." for k in range(18))
            text = f"System for project {i}. {facts} Question: the first rule"
            while len(model.tokenize(text, add_special=True, parse_special=False)) < 257:
                text += " again"
            assert len(model.tokenize(text, add_special=True, parse_special=False)) == 257
            prompts.append(text)
    finally:
        model.close()
    return prompts


def test_a_split_host_restores_an_evicted_prompt_with_its_workers_layers(tmp_path: Path) -> None:
    prompts = _padded_prompts(2)
    # One slot: the second prompt evicts the first, whose KV (half of it on B's RPC worker) is saved.
    one_slot = ["--parallel", "1", "--cache-ram", "0.2", "--cache-disk", "0"]
    a = NodeProcess(["--split", "--model", "SmolLM2-135M", *one_slot], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        nodes.append(NodeProcess(["--join", token], tmp_path / "b").start())
        a.wait_for(is_split_and_ready(2), 60, "a two-node split")

        def ask(prompt: str) -> tuple[str, dict[str, Any], float]:
            body = {"model": "SmolLM2-135M", "prompt": prompt, "max_tokens": 12, "temperature": 0}
            t0 = time.monotonic()
            r = httpx.post(f"{a.api}/v1/completions", json=body, timeout=300)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["text"]), r.json()["usage"], time.monotonic() - t0

        cold, usage, cold_s = ask(prompts[0])
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
        ask(prompts[1])
        warm, again, warm_s = ask(prompts[0])
        assert again["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
        assert warm == cold  # the worker's layers came back too: its cells held the other prompt

        # Status reads the engine's figures every half second: wait for the hit to show there.
        def counted(s: dict) -> bool:  # type: ignore[type-arg]
            cache = (split_row_of(s).get("slots") or {}).get("prefix_cache") or {}
            return bool(cache.get("hits", 0) >= 1 and cache.get("ram_bytes", 0) > 0)

        cache = split_row_of(a.wait_for(counted, 30, "the hit in the host's status"))["slots"]["prefix_cache"]
        print(
            f"split host: {usage['prompt_tokens']} tokens cold {cold_s:.2f} s, restored {warm_s:.2f} s "
            f"(restore {cache['restore_seconds_last'] * 1000:.0f} ms, save "
            f"{cache['save_seconds_last'] * 1000:.0f} ms, {cache['ram_entries']} states "
            f"in {cache['ram_bytes'] / 1e6:.1f} MB)"
        )
    finally:
        stop_all(nodes)
