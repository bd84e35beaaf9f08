"""End to end for families whose markers are control tokens: a tiny GGUF whose vocabulary holds
the family's real special tokens as CONTROL tokens and whose template is the family's real one,
served by the model server; a forced call (the grammar writes the family's syntax) comes back
parsed through the HTTP API, whole and streamed."""

from __future__ import annotations

import ctypes
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llama_cpp import llama_cpp as C

from mesh_llm.serving.engine._llama import Model
from mesh_llm.serving.engine._tools import validate_tools
from mesh_llm.serving.engine.dialects import (
    GLM,
    HARMONY,
    QWEN3,
    QWEN3_CODER,
    Dialect,
    forced_call_grammar,
    parse_answer,
    tool_schemas,
)
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
        [sys.executable, "-m", "mesh_llm.serving.model_server_main", "--fd", str(sock.fileno()), "--model", str(gguf),
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


# ── forced XML calls: string values may hold `<`, never the closing tag ────────────────────────

CODE_TOOL = validate_tools([{"type": "function", "function": {"name": "write", "parameters": {
    "type": "object", "properties": {"code": {"type": "string"}, "n": {"type": "integer"}}, "required": ["code"],
}}}])  # fmt: skip


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    """A tiny model whose vocabulary spells every byte as its own token, so any text can be fed
    to a grammar byte by byte."""
    path = write_dialect_gguf(tmp_path_factory.mktemp("bytes") / "bytes.gguf", "", ["</s>"], "</s>")
    yield Model(path)


def grammar_accepts(model: Model, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets `text` be generated in full and then end."""
    sampler = C.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    assert sampler, "llama.cpp rejected the grammar"
    eos = C.llama_vocab_eos(model.vocab)
    try:
        for token in [2 + b for b in text.encode()] + [eos]:
            data = (C.llama_token_data * 1)(C.llama_token_data(token, 0.0, 0.0))
            candidates = C.llama_token_data_array(data, 1, -1, False)
            C.llama_sampler_apply(sampler, ctypes.byref(candidates))
            if data[0].logit == -math.inf:
                return False
            if token != eos:
                C.llama_sampler_accept(sampler, token)
        return True
    finally:
        C.llama_sampler_free(sampler)


CODE = 'if a < b and c <= d: x = "<p>" + "</" + "</param" + "<tool_call>"  # <<EOF'


@pytest.mark.parametrize(
    ("dialect", "call"),
    [
        (QWEN3_CODER, "<tool_call>\n<function=write>\n<parameter=code>\n{}\n</parameter>\n</function>\n</tool_call>"),
        (GLM, "<tool_call>write\n<arg_key>code</arg_key>\n<arg_value>{}</arg_value>\n</tool_call>"),
    ],
    ids=lambda v: getattr(v, "name", ""),
)  # fmt: skip
def test_forced_xml_string_values_may_hold_angle_brackets(
    byte_model: Model, dialect: Dialect, call: str
) -> None:
    grammar = forced_call_grammar(dialect, CODE_TOOL, "write", in_reasoning=False)
    assert grammar is not None
    for value in (CODE, "ends in <", "a </", "<", ""):
        assert grammar_accepts(byte_model, grammar, call.format(value)), value
        parsed = parse_answer(dialect, call.format(value), tool_schemas(CODE_TOOL))
        assert json.loads(parsed.calls[0].arguments) == {"code": value}
    close = dialect.value_close
    assert not grammar_accepts(byte_model, grammar, call.format(f"a{close}b"))
    assert not grammar_accepts(byte_model, grammar, call.format(f"a\n{close}\nb"))


def test_forced_reasoning_may_hold_tags_but_not_its_close(byte_model: Model) -> None:
    grammar = forced_call_grammar(QWEN3, CODE_TOOL, "write", in_reasoning=True)
    assert grammar is not None
    call = '\n<tool_call>\n{"name": "write", "arguments": {"code": "x"}}\n</tool_call>'
    assert grammar_accepts(byte_model, grammar, "Use <b> or </b>, or </think</thin.</think>" + call)
    assert not grammar_accepts(byte_model, grammar, "a </think> b</think>" + call)


def test_forced_harmony_analysis_may_hold_angle_brackets_but_no_marker(byte_model: Model) -> None:
    grammar = forced_call_grammar(HARMONY, CODE_TOOL, "write", in_reasoning=False)
    assert grammar is not None
    call = '<|channel|>commentary to=functions.write <|constrain|>json<|message|>{"code": "x"}'
    head, tail = "<|channel|>analysis<|message|>", "<|end|><|start|>assistant"
    assert grammar_accepts(byte_model, grammar, f"{head}if a < b: <p>{tail}{call}")
    assert not grammar_accepts(byte_model, grammar, f"{head}a<|message|>b{tail}{call}")
