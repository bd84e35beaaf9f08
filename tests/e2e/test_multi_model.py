"""Multi-model meshes and demand: routing by name, standbys taking over lost and hot models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.harness import NodeProcess, stop_all

CHAT = [{"role": "user", "content": "Say hello."}]


def ready_hosts(node: NodeProcess, model: str) -> list[str]:
    return sorted(m["host"] for m in node.status()["models"] if m["name"] == model and m["ready"])


def ask(node: NodeProcess, model: str) -> httpx.Response:
    # A text completion: the Gemma 3 270M GGUF is a base model with no chat template.
    body = {"model": model, "prompt": "Say hello.", "max_tokens": 2}
    return httpx.post(f"{node.api}/v1/completions", json=body, timeout=60)


def test_requests_reach_the_right_model_and_a_standby_replaces_a_lost_host(tmp_path: Path) -> None:
    a = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--model", "Gemma-3-270M", "--join", token], tmp_path / "b").start()
        c = NodeProcess(["--client", "--join", token], tmp_path / "c").start()
        d = NodeProcess(["--join", token], tmp_path / "d").start()
        nodes += [b, c, d]
        b.wait_serving()
        c.wait_for(lambda s: sum(m["ready"] for m in s["models"]) == 2, 60, "both models on C")
        a_id, b_id = a.status()["node_id"], b.status()["node_id"]
        cards = {m["id"]: m["hosts"] for m in httpx.get(f"{c.api}/v1/models").json()["data"]}
        assert cards == {"SmolLM2-135M": [a_id[:8]], "Gemma-3-270M": [b_id[:8]]}

        client = openai.OpenAI(base_url=f"{c.api}/v1", api_key="x", max_retries=0, timeout=60)
        for model in ("SmolLM2-135M", "Gemma-3-270M", "SmolLM2-135M"):
            r = client.completions.create(model=model, prompt="Say hello.", max_tokens=4)
            assert r.choices[0].text is not None
        routed = {(m["name"], m["host"]): m["requests"] for m in c.status()["models"]}
        assert routed == {("SmolLM2-135M", a_id): 2, ("Gemma-3-270M", b_id): 1}
        # Gemma 3 270M is a base model: chat gets a clear 400 that says what to use instead.
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="Gemma-3-270M", messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
        assert "/v1/completions" in str(info.value)
        assert d.status()["role"] == "standby" and d.status()["standby"] == "idle"

        # A dies while SmolLM2 requests keep coming: the standby D serves it within 60 s.
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        codes = []
        while time.monotonic() - killed < 60:
            r = ask(c, "SmolLM2-135M")
            codes.append(r.status_code)
            if r.status_code == 200 and a_id not in {p["node_id"] for p in c.status()["peers"]}:
                break
            time.sleep(1)
        recovered_after = time.monotonic() - killed
        assert codes[-1] == 200, codes
        assert recovered_after < 60
        assert set(codes[:-1]) <= {200, 503}, codes  # never a wrong model, never a 404
        assert ready_hosts(c, "SmolLM2-135M") == [d.status()["node_id"]]
        assert d.status()["role"] == "host"
        demand = {row["model"]: row for row in c.status()["demand"]}
        assert demand["SmolLM2-135M"]["total"] >= len(codes) and demand["SmolLM2-135M"]["rpm"] > 0
        # Gemma still answers from B the whole time.
        assert ask(c, "Gemma-3-270M").status_code == 200
    finally:
        stop_all(nodes)


def test_sustained_load_makes_a_standby_join_the_hot_model(tmp_path: Path) -> None:
    a = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        d = NodeProcess(["--join", token], tmp_path / "d").start()
        nodes.append(d)
        a.wait_for(lambda s: len(s["peers"]) == 1, 30, "D to join")
        d_id = d.status()["node_id"]
        time.sleep(3)  # a few idle evaluations: no demand, so D stays a standby
        assert d.status()["role"] == "standby" and d.children() == []
        with httpx.Client(timeout=60) as http:
            body = {"model": "SmolLM2-135M", "prompt": "Hi", "max_tokens": 1}
            for _ in range(60):
                assert http.post(f"{a.api}/v1/completions", json=body).status_code == 200
        a.wait_for(
            lambda s: d_id in {m["host"] for m in s["models"] if m["ready"]}, 60, "D to serve the hot model"
        )
        rows = {row["model"]: row for row in a.status()["demand"]}
        assert rows["SmolLM2-135M"]["rpm"] >= 10 and len(rows["SmolLM2-135M"]["servers"]) == 2
    finally:
        stop_all(nodes)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_llm", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_drop_stops_a_model_and_plan_shows_the_split_the_mesh_would_use(tmp_path: Path) -> None:
    a = NodeProcess(["--model", "SmolLM2-135M", "--model", "Gemma-3-270M"], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--join", token, "--max-vram", "0.05"], tmp_path / "b").start()
        nodes.append(b)
        a.wait_for(lambda s: len(s["peers"]) == 1, 30, "B to join")
        r = run_cli("plan", "SmolLM2-135M", "--console", str(a.console_port))
        assert r.returncode == 0, r.stderr
        assert "SmolLM2-135M: solo, 30 layers" in r.stdout and "0-29" in r.stdout

        r = run_cli("drop", "Gemma-3-270M", "--console", str(a.console_port))
        assert r.returncode == 0 and "dropped Gemma-3-270M" in r.stdout, r.stderr
        s = a.wait_for(
            lambda s: [m["name"] for m in s["models"] if m["local"]] == ["SmolLM2-135M"], 20, "the drop"
        )
        assert s["declined"] == ["Gemma-3-270M"]
        ids = [m["id"] for m in httpx.get(f"{b.api}/v1/models").json()["data"]]
        assert ids == ["SmolLM2-135M"]
        r = run_cli("drop", "Gemma-3-270M", "--console", str(a.console_port))
        assert r.returncode == 1 and "does not serve" in r.stderr
        # A malformed control request is refused with a clear 400; one that is not JSON with a 415.
        json_type = {"content-type": "application/json"}
        assert httpx.post(f"{a.console}/api/drop", content=b"nope", headers=json_type).status_code == 400
        assert httpx.post(f"{a.console}/api/drop", content=b"nope").status_code == 415
    finally:
        stop_all(nodes)
