"""End to end for families whose markers are control tokens: a tiny GGUF whose vocabulary holds
the family's real special tokens as CONTROL tokens and whose template is the family's real one,
served by the model server; a forced call (the grammar writes the family's syntax) comes back
parsed through the HTTP API, whole and streamed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gguf_fixtures import write_dialect_gguf

TEMPLATES = Path(__file__).parent.parent / "templates"
BAR = "\uff5c"  # DeepSeek's fullwidth bar
FAMILIES = {
    "harmony": (
        "openai-gpt-oss-120b.jinja",
        ["<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|call|>", "<|return|>"],
        "<|return|>",
    ),
    "kimi": (
        "moonshotai-Kimi-K2.jinja",
        ["<|im_end|>", "<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>",
         "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
         "<|tool_call_argument_begin|>", "<|tool_call_end|>"],
        "<|im_end|>",
    ),
    "deepseek": (
        "deepseek-ai-DeepSeek-V3.1.jinja",
        [f"<{BAR}end▁of▁sentence{BAR}>", f"<{BAR}User{BAR}>", f"<{BAR}Assistant{BAR}>",
         *(f"<{BAR}{m}{BAR}>" for m in ("tool▁calls▁begin", "tool▁calls▁end", "tool▁call▁begin", "tool▁call▁end", "tool▁sep"))],
        f"<{BAR}end▁of▁sentence{BAR}>",
    ),
}  # fmt: skip
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Rome", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(params=sorted(FAMILIES))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    name, specials, eog = FAMILIES[request.param]
    gguf = write_dialect_gguf(tmp_path / "tiny.gguf", (TEMPLATES / name).read_text(), specials, eog)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh_llm.serving.model_server", "--fd", str(sock.fileno()), "--model", str(gguf),
         "--alias", "tiny", "--n-ctx", "1024", "--parallel", "1", "--parent-pid", str(os.getpid())],
        pass_fds=[sock.fileno()],
    )  # fmt: skip
    sock.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/mesh/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield base, specials
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_forced_call_in_control_token_markup_comes_back_parsed(server: tuple[str, list[str]]) -> None:
    base, specials = server
    # The markers are control tokens: favouring them makes the model write them as such (not
    # spelled out in bytes), so the call parses only if their text reaches the parser.
    with httpx.Client(base_url=base, timeout=120) as client:
        vocab_size = 256 + 3 + len(specials)
        bias = {str(t): 50 for t in range(259, vocab_size)}
        body = {
            "model": "tiny", "messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": [TOOL],
            "tool_choice": "required", "temperature": 0, "max_tokens": 200, "logit_bias": bias,
        }  # fmt: skip
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"])["city"] in ("Rome", "Oslo")
        assert not choice["message"]["content"]
        args = ""
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: {"):
                    for d in json.loads(line[6:])["choices"][0]["delta"].get("tool_calls") or []:
                        args += d["function"].get("arguments", "")
        assert json.loads(args) == json.loads(call["function"]["arguments"])
