"""Everyday operation with real nodes: logs, /metrics, the CLI, stopping, joining and failover."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import InviteToken, new_mesh
from tests.harness import REPO, NodeProcess, free_port, stop_all, wait_gone

CHAT = [{"role": "user", "content": "Say hello."}]
MODEL = "SmolLM2-135M"
LONG = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 3000, "min_tokens": 3000, "stream": True}


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`mesh-llm ARGS` as a user runs it (from the repository, offline, a wide terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "mesh_llm", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def wait_until(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()  # type: ignore[operator]
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def stopped_cleanly(node: NodeProcess, sig: int = signal.SIGTERM) -> None:
    pids = [c.pid for c in node.children()]
    assert node.stop(sig) == 0
    assert wait_gone(pids) == []
    assert "Traceback" not in node.log(), node.log()


# ---- observability -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_json_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(
        ["--model", MODEL, "--api-key", "s3cret", "--log-format", "json"], tmp_path_factory.mktemp("json")
    ).start()
    try:
        node.wait_serving()
        yield node
    finally:
        stopped_cleanly(node)


def access_lines(node: NodeProcess) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for line in node.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)  # every line of a JSON log is one JSON object
            if record["logger"] == "mesh_llm.access":
                out.append(record)
    return out


def test_json_log_has_one_access_line_per_request(keyed_json_node: NodeProcess) -> None:
    node = keyed_json_node
    client = openai.OpenAI(base_url=f"{node.api}/v1", api_key="s3cret", max_retries=0, timeout=60)
    before = len(access_lines(node))
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)  # type: ignore[arg-type]
    stream = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    # The proxy asked the host for usage to count tokens, but the client did not: none reaches it.
    assert chunks and all(c.usage is None for c in chunks)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=CHAT)  # type: ignore[arg-type]
    lines = wait_until(lambda: access_lines(node)[before:] if len(access_lines(node)) >= before + 3 else None,
                       10, "three access lines")  # fmt: skip
    plain, streamed, missing = lines  # type: ignore[misc]
    me = node.status()["short_id"]
    assert plain["model"] == MODEL and plain["status"] == 200 and plain["host"] == me
    assert plain["stream"] is False and plain["level"] == "info"
    assert plain["prompt_tokens"] == whole.usage.prompt_tokens  # type: ignore[union-attr]
    assert plain["completion_tokens"] == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert plain["duration_s"] > 0 and plain["ttft_s"] is None
    assert streamed["stream"] is True and streamed["status"] == 200 and streamed["completion_tokens"] >= 1
    assert streamed["prompt_tokens"] == plain["prompt_tokens"]
    assert 0 < streamed["ttft_s"] <= streamed["duration_s"]
    assert missing["status"] == 404 and missing["error"] == "model_not_found" and missing["host"] is None


def test_metrics_need_the_key_on_both_ports_and_count_requests(keyed_json_node: NodeProcess) -> None:
    node = keyed_json_node
    for base in (node.api, node.console):
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    client = openai.OpenAI(base_url=f"{node.api}/v1", api_key="s3cret", max_retries=0, timeout=60)
    list(client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, stream=True))
    key = {"Authorization": "Bearer s3cret"}
    for base in (node.api, node.console):
        r = httpx.get(f"{base}/metrics", headers=key)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        assert samples[f'mesh_llm_requests_total{{model="{MODEL}",status="200"}}'] >= 1
        assert samples[f'mesh_llm_tokens_total{{model="{MODEL}",kind="completion"}}'] >= 1
        assert samples[f'mesh_llm_time_to_first_token_seconds_count{{model="{MODEL}"}}'] >= 1
        busy = samples[f'mesh_llm_slots{{model="{MODEL}",state="busy"}}']
        free = samples[f'mesh_llm_slots{{model="{MODEL}",state="free"}}']
        assert busy + free == 4  # --parallel's default
        assert samples[f'mesh_llm_queued_requests{{model="{MODEL}"}}'] >= 0
        assert samples['mesh_llm_peers{state="alive"}'] == 0
    # The API port's status route (for nodes without a console) has the same key rule.
    assert httpx.get(f"{node.api}/api/status").status_code == 401
    assert httpx.get(f"{node.api}/api/status", headers=key).json()["state"] == "serving"


# ---- the CLI a user runs -----------------------------------------------------------------


def test_status_token_and_client_configs_find_the_node_without_flags(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": ""}
    # --no-console: the runtime file names the API port, which answers /api/status too.
    node = NodeProcess(["--model", MODEL, "--no-console"], home / ".mesh-llm", env=env).start()
    try:
        status = wait_until(
            lambda: (r := cli("status", "--json", env=env)).returncode == 0
            and json.loads(r.stdout)["state"] == "serving"
            and json.loads(r.stdout),
            90, "the node to serve",
        )  # fmt: skip
        assert isinstance(status, dict)
        token = status["invite_token"]
        assert InviteToken.decode(token).node_id == status["node_id"]
        # The token is printed whole on a line of its own, in the log and by `status`.
        assert token in node.log().splitlines()
        r = cli("status", env=env)
        assert r.returncode == 0, r.stderr
        assert token in r.stdout.splitlines()
        assert "solo" in r.stdout and "all" in r.stdout and MODEL in r.stdout and " s " in r.stdout
        r = cli("token", env=env)
        assert r.returncode == 0 and r.stdout == token + "\n"

        r = cli("opencode", "--write", env=env)
        assert r.returncode == 0, r.stderr
        config = json.loads((home / ".config" / "opencode" / "opencode.json").read_text())
        provider = config["provider"]["mesh-llm"]
        assert config["model"] == f"mesh-llm/{MODEL}" and list(provider["models"]) == [MODEL]
        # The configuration works: an OpenAI client built from it gets an answer.
        client = openai.OpenAI(base_url=provider["options"]["baseURL"], api_key=provider["options"]["apiKey"])
        answer = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
        assert answer.choices[0].message.content

        r = cli("goose", env=env)
        assert r.returncode == 0, r.stderr
        goose = json.loads(r.stdout)
        assert goose["engine"] == "openai" and [m["name"] for m in goose["models"]] == [MODEL]
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 4}
        assert httpx.post(goose["base_url"], json=body, timeout=60).status_code == 200
        runtime = home / ".mesh-llm" / "runtime.json"
        assert runtime.is_file()
    finally:
        stopped_cleanly(node)
    assert not runtime.exists(), "a clean exit removes the runtime file"
    r = cli("status", "--state-dir", str(home / ".mesh-llm"), env=env)
    assert r.returncode == 1 and "no mesh-llm node is running" in r.stderr
    # A runtime file left by a dead node is ignored, not trusted.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runtime.write_text(json.dumps({"pid": dead.pid, "node_id": "x", "api_port": node.api_port,
                                   "console_port": None, "started_at": time.time()}))  # fmt: skip
    r = cli("token", "--state-dir", str(home / ".mesh-llm"), env=env)
    assert r.returncode == 1 and "no mesh-llm node is running" in r.stderr


def test_help_lists_commands_and_each_has_its_own() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for name in (
        "status",
        "token",
        "download",
        "drop",
        "plan",
        "opencode",
        "goose",
        "rotate-key",
        "discover",
    ):
        assert f"  {name} " in r.stdout
        sub = cli(name, "--help")
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: mesh-llm {name}"), sub.stdout
    r = cli("dicsover", "--help")
    assert r.returncode == 2 and "unknown command 'dicsover'" in r.stderr and r.stdout == ""


def test_downloads_fail_fast_and_a_node_with_no_usable_model_exits(tmp_path: Path) -> None:
    # A hub endpoint where nothing listens stands in for a machine without a network.
    offline = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    r = cli("download", "Qwen2.5-0.5B", env=offline)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot reach" in r.stderr and "Qwen2.5-0.5B" in r.stderr
    r = cli("download", "Qwen2.5-0.5B")  # HF_HUB_OFFLINE=1
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "HF_HUB_OFFLINE" in r.stderr
    args = ["--model", "Qwen2.5-0.5B", "--port", str(free_port()), "--console", str(free_port())]
    r = cli(*args, "--state-dir", str(tmp_path), env=offline)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot serve Qwen2.5-0.5B: cannot download")
    assert "Traceback" not in r.stderr and not (tmp_path / "runtime.json").exists()


# ---- stopping ----------------------------------------------------------------------------


def test_ctrl_c_ends_a_stream_with_an_error_event_and_done_then_exits_cleanly(tmp_path: Path) -> None:
    node = NodeProcess(["--model", MODEL], tmp_path / "n").start()
    node.wait_serving()
    pids = [c.pid for c in node.children()]
    events: list[str] = []
    with httpx.stream("POST", f"{node.api}/v1/completions", json=LONG, timeout=60) as r:
        for line in r.iter_lines():  # a broken chunked encoding would raise here
            if line.startswith("data:"):
                events.append(line[5:].strip())
                if len(events) == 5:
                    assert node.proc is not None
                    node.proc.send_signal(signal.SIGINT)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    error = json.loads(events[-2])["error"]
    assert error["code"] == "node_shutting_down" and "shutting down" in error["message"]
    assert node.proc is not None and node.proc.wait(30) == 0
    assert wait_gone(pids) == []
    log = node.log()
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "error=node_shutting_down" in log  # its access line
    assert not (node.state_dir / "runtime.json").exists()


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    node = NodeProcess(["--model", MODEL], tmp_path / "n").start()
    node.wait_serving()
    pids = [c.pid for c in node.children()]
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)  # an orderly stop that waits on answers in progress...
    wait_until(lambda: "stopping (SIGTERM)" in node.log(), 10, "the first stop")
    node.proc.send_signal(signal.SIGINT)  # ...and Ctrl-C cuts it short
    assert node.proc.wait(10) == 130
    assert wait_gone(pids) == [], "the model server outlived its node"


# ---- joining -----------------------------------------------------------------------------


def test_an_unreachable_inviter_is_reported_and_requests_say_why(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    ghost = NodeIdentity.generate().node_id
    token = new_mesh().invite(ghost, [f"127.0.0.1:{port}"]).encode()
    node = NodeProcess(["--client", "--join", token], tmp_path / "n").start()
    try:
        node.wait_for(lambda s: s["state"] == "client", 30, "the client to start")
        wait_until(
            lambda: f"dialling inviter {ghost[:8]} at 127.0.0.1:{port}" in node.log(), 20, "a dial line"
        )
        wait_until(lambda: f"could not join through inviter {ghost[:8]} (attempt 1" in node.log(), 30,
                   "the failure after the dial deadline")  # fmt: skip
        assert "retrying" in node.log()
        r = httpx.post(f"{node.api}/v1/chat/completions", json={"model": MODEL, "messages": CHAT})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert "has not reached its mesh yet" in r.json()["error"]["message"]
    finally:
        stopped_cleanly(node)


# ---- failover ----------------------------------------------------------------------------


def ask(node: NodeProcess, model: str = MODEL) -> httpx.Response:
    # A text completion: the Gemma 3 270M GGUF is a base model with no chat template.
    return httpx.post(f"{node.api}/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 2},
                      timeout=60)  # fmt: skip


def test_a_dropped_model_goes_to_a_standby_with_503s_meanwhile_never_404(tmp_path: Path) -> None:
    a = NodeProcess(["--model", MODEL], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--join", token], tmp_path / "b").start()
        # C's token arrives as pasted from a wrapped terminal: broken over lines, indented.
        pasted = "\n  ".join(token[i : i + 60] for i in range(0, len(token), 60)) + "\n"
        c = NodeProcess(["--client", "--join", pasted], tmp_path / "c").start()
        nodes += [b, c]
        c.wait_for(lambda s: any(m["ready"] for m in s["models"]), 30, "C to see A's model")
        a.wait_for(lambda s: len(s["peers"]) == 2, 30, "A to see B and C")
        assert b.status()["role"] == "standby"
        for _ in range(3):
            assert ask(c).status_code == 200

        r = cli("drop", MODEL, "--state-dir", str(a.state_dir))  # found through A's runtime file
        assert r.returncode == 0, r.stderr
        dropped = time.monotonic()
        codes: list[int] = []
        while time.monotonic() - dropped < 60:
            r = ask(c)
            codes.append(r.status_code)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) > 0 and r.json()["error"]["code"] == "model_not_ready"
            time.sleep(0.2)
        pickup_s = time.monotonic() - dropped
        assert codes[-1] == 200, codes
        print(f"standby pickup after drop: first 200 after {pickup_s:.1f} s, {len(codes) - 1} 503s")
        b_id = b.status()["node_id"]
        assert [m["host"] for m in c.status()["models"] if m["ready"]] == [b_id]
        assert f"standby picks up {MODEL} (unserved" in b.log()
        assert f"standby picks up {MODEL}" not in a.log(), "A declined the model: it must not take it back"

        # A model nobody has served yet, asked for once: 503 from the first request (A, now a
        # standby with it on disk, is about to load it), then 200 — never 404.
        r = ask(c, "Gemma-3-270M")
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        assert f"standby node {a.status()['short_id']} is about to load it" in r.json()["error"]["message"]

        def gemma_answers() -> bool:
            r = ask(c, "Gemma-3-270M")
            assert r.status_code in (200, 503), r.text
            return r.status_code == 200

        wait_until(gemma_answers, 60, "A to serve Gemma-3-270M")
        assert "standby picks up Gemma-3-270M (unserved" in a.log()

        # Now B drops SmolLM2 too: nobody may take it. Requests say so, and what to do.
        assert cli("drop", MODEL, "--state-dir", str(b.state_dir)).returncode == 0

        def offline_message() -> str | None:
            r = ask(c)
            assert r.status_code == 503, r.text  # never 404: the model is known to the mesh
            message = str(r.json()["error"]["message"])
            return message if "no standby node can take it" in message else None

        message = str(wait_until(offline_message, 30, "the 'nobody can take it' answer"))
        assert "mesh-llm drop" in message and f"--model {MODEL}" in message
        assert "about to load" not in message
    finally:
        stop_all(nodes)
