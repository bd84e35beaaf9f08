"""Failure and lifecycle behaviour of a real node: auth, crashes, restarts, shutdown, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import psutil
import pytest

from tests.harness import REPO, NodeProcess, free_port, wait_gone

CHAT = [{"role": "user", "content": "Say hello."}]


def model_row(node: NodeProcess) -> dict:  # type: ignore[type-arg]
    (row,) = node.status()["models"]
    return dict(row)


def test_api_key_is_required_when_set(tmp_path: pytest.TempPathFactory) -> None:
    node = NodeProcess(
        ["--model", "SmolLM2-135M"], tmp_path / "n", env={"MESH_LLM_API_KEY": "s3cret"}
    ).start()  # type: ignore[operator]
    try:
        node.wait_serving()
        r = httpx.get(f"{node.api}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(f"{node.api}/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{node.api}/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{node.api}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list().data] == ["SmolLM2-135M"]
        r2 = good.chat.completions.create(model="SmolLM2-135M", messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
        assert r2.choices[0].message.content is not None
        assert node.status()["api"]["auth"] is True
    finally:
        node.stop()


def test_killed_model_server_is_reported_restarted_and_serves_again(tmp_path: pytest.TempPathFactory) -> None:
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "n").start()  # type: ignore[operator]
    try:
        node.wait_serving()
        client = openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=60)
        first_pid = model_row(node)["pid"]
        os.kill(first_pid, signal.SIGKILL)
        down = node.wait_for(lambda s: s["models"][0]["state"] != "ready", 10, "the crash to be noticed")
        assert down["state"] == "degraded" and down["models"][0]["restarts"] == 1
        r = httpx.post(f"{node.api}/v1/chat/completions", json={"model": "SmolLM2-135M", "messages": CHAT})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "model_not_ready" and int(r.headers["retry-after"]) > 0
        up = node.wait_serving(30)
        assert up["models"][0]["pid"] != first_pid
        r3 = client.chat.completions.create(model="SmolLM2-135M", messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
        assert r3.choices[0].message.content is not None
    finally:
        node.stop()


def test_model_server_dying_mid_stream_ends_with_an_sse_error_event(tmp_path: pytest.TempPathFactory) -> None:
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "n").start()  # type: ignore[operator]
    try:
        node.wait_serving()
        pid = model_row(node)["pid"]
        body = {
            "model": "SmolLM2-135M",
            "prompt": "1, 2, 3,",
            "max_tokens": 3000,
            "min_tokens": 3000,
            "stream": True,
        }
        events: list[str] = []
        with httpx.stream("POST", f"{node.api}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                    if len(events) == 5:
                        os.kill(pid, signal.SIGKILL)
        assert len(events) > 5
        # One error event, then [DONE] (so SDKs read the error), then nothing.
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        last = json.loads(events[-2])
        assert last["error"]["code"] == "backend_failed" and "incomplete" in last["error"]["message"]
        # The official client surfaces that event as an error instead of a silently short answer.
        node.wait_serving(30)
        pid = model_row(node)["pid"]
        client = openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=60)
        stream = client.completions.create(
            model="SmolLM2-135M",
            prompt="1, 2, 3,",
            max_tokens=3000,
            stream=True,
            extra_body={"min_tokens": 3000},
        )
        with pytest.raises(openai.APIError):
            for i, _ in enumerate(stream):
                if i == 5:
                    os.kill(pid, signal.SIGKILL)
    finally:
        node.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_stops_exactly_the_children_it_started(tmp_path: pytest.TempPathFactory, sig: int) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "n").start()  # type: ignore[operator]
    try:
        node.wait_serving()
        children = [c.pid for c in node.children()]
        assert children, "the node should run a model server child"
        assert node.stop(sig) == 0
        assert wait_gone(children) == []
        assert list((node.state_dir / "run").iterdir()) == [], "the model server's socket was left behind"
        assert bystander.poll() is None, "an unrelated process was killed"
    finally:
        bystander.kill()
        bystander.wait()


def test_kill_9_of_the_node_leaves_no_orphan_model_server(tmp_path: pytest.TempPathFactory) -> None:
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "n").start()  # type: ignore[operator]
    node.wait_serving()
    children = [c.pid for c in node.children()]
    assert children
    node.stop(signal.SIGKILL)
    assert wait_gone(children) == [], "model server outlived a kill -9'd node"


def test_in_flight_request_finishes_during_graceful_shutdown(tmp_path: pytest.TempPathFactory) -> None:
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "n").start()  # type: ignore[operator]
    try:
        node.wait_serving()
        body = {
            "model": "SmolLM2-135M",
            "prompt": "Once upon a time",
            "max_tokens": 40,
            "min_tokens": 40,
            "stream": True,
        }
        chunks = []
        with httpx.stream("POST", f"{node.api}/v1/completions", json=body, timeout=60) as r:
            for i, line in enumerate(r.iter_lines()):
                if i == 2:
                    assert node.proc is not None
                    node.proc.send_signal(signal.SIGTERM)
                if line.startswith("data:"):
                    chunks.append(line[5:].strip())
        assert chunks[-1] == "[DONE]"
    finally:
        node.stop()


def test_idle_node_serves_a_read_only_console_with_instructions(tmp_path: pytest.TempPathFactory) -> None:
    node = NodeProcess([], tmp_path / "n").start()  # type: ignore[operator]
    try:
        s = node.wait_for(lambda s: s["state"] == "idle", 20, "idle state")
        assert s["models"] == [] and s["api"]["port"] is None
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{node.api}/v1/models")
        assert "--join" in node.log() and "--model" in node.log()
    finally:
        node.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_llm", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )  # fmt: skip


def test_busy_port_is_a_clear_error(tmp_path: pytest.TempPathFactory) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli(
            "--model",
            "SmolLM2-135M",
            "--port",
            str(port),
            "--console",
            str(free_port()),
            "--state-dir",
            str(tmp_path),
        )
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


def test_unknown_model_name_is_a_clear_error(tmp_path: pytest.TempPathFactory) -> None:
    r = run_cli(
        "--model",
        "NoSuchModel-9000B",
        "--port",
        str(free_port()),
        "--console",
        str(free_port()),
        "--state-dir",
        str(tmp_path),
    )
    assert r.returncode == 2 and "not a catalog model" in r.stderr


def test_missing_gguf_path_is_a_clear_error(tmp_path: pytest.TempPathFactory) -> None:
    r = run_cli(
        "--model",
        "/nope/x.gguf",
        "--port",
        str(free_port()),
        "--console",
        str(free_port()),
        "--state-dir",
        str(tmp_path),
    )
    assert r.returncode == 2 and "no such model file" in r.stderr


def test_status_command_prints_a_table(tmp_path: pytest.TempPathFactory) -> None:
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "n").start()  # type: ignore[operator]
    try:
        node.wait_serving()
        r = run_cli("status", "--console", str(node.console_port))
        assert r.returncode == 0, r.stderr
        assert "SmolLM2-135M" in r.stdout and "ready" in r.stdout and "serving" in r.stdout
        r = run_cli("status", "--console", str(node.console_port), "--json")
        assert json.loads(r.stdout)["state"] == "serving"
    finally:
        node.stop()
    r = run_cli("status", "--console", str(free_port()))
    assert r.returncode == 1 and "no mesh-llm node answered" in r.stderr


def test_download_lists_the_catalog_offline() -> None:
    r = run_cli("download")
    assert r.returncode == 0 and "Qwen2.5-32B" in r.stdout and "Llama-3.3-70B" in r.stdout
    assert "SmolLM2-135M" in r.stdout
    r = run_cli("download", "SmolLM2-135M")
    assert r.returncode == 0 and "already on disk" in r.stdout


def test_no_processes_left_behind_by_this_module() -> None:
    me = psutil.Process()
    leftovers = [c for c in me.children(recursive=True) if "mesh_llm" in " ".join(c.cmdline())]
    time.sleep(0.1)
    assert leftovers == []
