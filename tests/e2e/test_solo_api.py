"""A real node serving SmolLM2 through :9337, driven by the official openai client and httpx."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.harness import NodeProcess, smollm2_path

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def client(solo_node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{solo_node.api}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["SmolLM2-135M"]


def test_chat_completion_answers(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="SmolLM2-135M", messages=CHAT, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens > 0


def test_chat_completion_streams_token_by_token(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="SmolLM2-135M",
        messages=CHAT,
        max_tokens=16,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3
    full = client.chat.completions.create(model="SmolLM2-135M", messages=CHAT, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    assert "".join(pieces) == full.choices[0].message.content


def test_completion_streaming_and_not_agree(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="SmolLM2-135M", prompt=PROMPT, max_tokens=12, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="SmolLM2-135M", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
        )
    )
    assert plain.choices[0].text and streamed == plain.choices[0].text


def test_greedy_output_equals_llama_cpp_python(client: openai.OpenAI) -> None:
    from llama_cpp import Llama

    # Our engine's defaults are the library's (repeat_penalty 1.0), and a request alone decodes
    # with the same kernels as Llama (flash attention off), so greedy output is identical.
    llm = Llama(model_path=str(smollm2_path()), n_ctx=4096, verbose=False)
    direct = llm.create_completion(PROMPT, max_tokens=24, temperature=0)
    direct_chat = llm.create_chat_completion(messages=CHAT, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    via_mesh = client.completions.create(model="SmolLM2-135M", prompt=PROMPT, max_tokens=24, temperature=0)
    via_mesh_chat = client.chat.completions.create(
        model="SmolLM2-135M", messages=CHAT, max_tokens=24, temperature=0
    )  # type: ignore[arg-type]
    assert via_mesh.choices[0].text == direct["choices"][0]["text"]  # type: ignore[index]
    assert via_mesh_chat.choices[0].message.content == direct_chat["choices"][0]["message"]["content"]  # type: ignore[index]


def test_model_names_match_without_case(client: openai.OpenAI) -> None:
    r = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=2, temperature=0)
    assert r.choices[0].text


def test_unknown_model_is_404_model_not_found_listing_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4", messages=CHAT)  # type: ignore[arg-type]
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert "SmolLM2-135M" in body["message"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (json.dumps({"messages": CHAT}).encode(), "missing_required_parameter"),
        (json.dumps({"model": "SmolLM2-135M"}).encode(), "missing_required_parameter"),
        (json.dumps({"model": "SmolLM2-135M", "messages": []}).encode(), "invalid_value"),
        (
            json.dumps({"model": "SmolLM2-135M", "messages": CHAT, "max_tokens": "many"}).encode(),
            "invalid_value",
        ),
    ],
)
def test_bad_requests_get_400_in_openai_shape(solo_node: NodeProcess, payload: bytes, code: str) -> None:
    r = httpx.post(
        f"{solo_node.api}/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]


def test_unknown_path_is_openai_shaped_404(solo_node: NodeProcess) -> None:
    r = httpx.get(f"{solo_node.api}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_status_reports_model_ports_capacity_and_counts(
    solo_node: NodeProcess, client: openai.OpenAI
) -> None:
    before = solo_node.status()["requests_total"]
    client.completions.create(model="SmolLM2-135M", prompt=PROMPT, max_tokens=1)
    s = solo_node.status()
    assert s["state"] == "serving" and s["role"] == "host" and len(s["node_id"]) == 64
    assert s["api"]["port"] == solo_node.api_port and s["console"]["port"] == solo_node.console_port
    (m,) = s["models"]
    assert (
        m["name"] == "SmolLM2-135M"
        and m["ready"]
        and m["pid"]
        and m["size_bytes"] == smollm2_path().stat().st_size
    )
    assert s["capacity"]["offered_bytes"] > 0 and s["ram"]["total_bytes"] >= s["capacity"]["offered_bytes"]
    assert s["requests_total"] == before + 1 and s["in_flight"] == 0
    assert s["peers"] == []


def test_events_stream_status_on_connect_and_on_change(solo_node: NodeProcess, client: openai.OpenAI) -> None:
    with httpx.stream("GET", f"{solo_node.console}/api/events", timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        first = _next_event(lines)
        assert first["state"] == "serving"
        client.completions.create(model="SmolLM2-135M", prompt=PROMPT, max_tokens=1)
        later = _next_event(lines)
        assert later["requests_total"] >= first["requests_total"]
        while later["requests_total"] == first["requests_total"] or later["in_flight"]:
            later = _next_event(lines)
        assert later["requests_total"] == first["requests_total"] + 1


def _next_event(lines: object) -> dict:  # type: ignore[type-arg]
    event = None
    for line in lines:  # type: ignore[attr-defined]
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "status":
            return dict(json.loads(line[5:]))
    raise AssertionError("event stream ended")


def test_console_serves_a_page(solo_node: NodeProcess) -> None:
    r = httpx.get(f"{solo_node.console}/")
    assert r.status_code == 200 and "mesh-llm" in r.text


def test_the_model_servers_own_socket_answers_only_for_this_machine(solo_node: NodeProcess) -> None:
    # Anything that sends another Host (a DNS-rebinding page, were it to reach the socket) is
    # refused by the model server itself, past the node's own checks.
    (m,) = solo_node.status()["models"]
    with httpx.Client(transport=httpx.HTTPTransport(uds=m["socket"]), timeout=10) as child:
        refused = child.get("http://rebind.attacker.example/mesh/health")
        assert refused.status_code == 421 and refused.json()["error"]["code"] == "misdirected_request"
        assert child.get("http://localhost/mesh/health").status_code == 200
        assert child.get("http://127.0.0.1/mesh/health").status_code == 200


def test_no_other_local_user_can_reach_the_model_server(solo_node: NodeProcess) -> None:
    # The attack: any local process connected to the model server's loopback TCP port and got
    # the model whatever --api-key said. Now it listens only on a Unix socket in a directory
    # only the node's user may enter, and no TCP port is open for it at all.
    (m,) = solo_node.status()["models"]
    assert m["port"] is None
    sock = Path(m["socket"])
    assert sock.parent == solo_node.state_dir / "run"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert sock.stat().st_uid == sock.parent.stat().st_uid == os.getuid()
    child = psutil.Process(m["pid"])
    assert [c for c in child.net_connections("inet") if c.status == psutil.CONN_LISTEN] == []
    assert solo_node.proc is not None
    node = psutil.Process(solo_node.proc.pid)
    listening = {c.laddr for c in node.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert {a.port for a in listening} == {solo_node.api_port, solo_node.console_port}
