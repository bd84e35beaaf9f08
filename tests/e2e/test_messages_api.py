"""Anthropic Messages on real nodes, driven by the official `anthropic` SDK: answers, streams,
a tool round trip, token counts, stop sequences, errors and the API key, on a host and through a
`--client` node whose model is on that host. Two node starts for the whole module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import TextBlock, ToolUseBlock

from tests.harness import NodeProcess, smollm2_path, stop_all
from tests.tool_gguf import write_tool_capable_gguf

KEY = "messages-e2e-key"
WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "celsius": {"type": "boolean"}},
        "required": ["city", "celsius"],
    },
}
# The SDK no longer offers sampling fields as arguments; the API still takes them.
GREEDY = {"temperature": 0}
HELLO: Any = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    """A host of the demo model with a tool-capable template, keyed; and a --client joined to it."""
    root = tmp_path_factory.mktemp("messages")
    gguf = write_tool_capable_gguf(smollm2_path(), root / "smol-tools.gguf")
    host = NodeProcess(["--model", str(gguf), "--ctx-size", "2048", "--api-key", KEY], root / "host").start()
    nodes = {"host": host}
    try:
        token = host.wait_serving()["invite_token"]
        nodes["client"] = NodeProcess(["--client", "--join", token], root / "client").start()
        nodes["client"].wait_for(
            lambda s: any(m["ready"] for m in s["models"]), 60, "the client to see the host's model"
        )
        yield nodes
    finally:
        stop_all(nodes.values())


@pytest.fixture(scope="module")
def model(mesh: dict[str, NodeProcess]) -> str:
    r = httpx.get(f"{mesh['host'].api}/v1/models", headers={"x-api-key": KEY}, timeout=10)
    r.raise_for_status()
    (name,) = [m["id"] for m in r.json()["data"]]
    return str(name)


def _client(node: NodeProcess, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=node.api, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(mesh: dict[str, NodeProcess]) -> anthropic.Anthropic:
    return _client(mesh["host"])


def _text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


def test_create_answers_a_message(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(
        model=model, max_tokens=16, messages=HELLO, system="Answer briefly.", extra_body=GREEDY
    )
    assert message.type == "message" and message.role == "assistant" and message.model == model
    assert message.id.startswith("msg_") and _text(message)
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 16


def test_stream_sends_text_deltas_and_the_final_message(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(model=model, max_tokens=16, messages=HELLO, extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == _text(final)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_a_forced_tool_then_its_result_then_an_answer(client: anthropic.Anthropic, model: str) -> None:
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = client.messages.create(
        model=model,
        max_tokens=60,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    )
    assert called.stop_reason == "tool_use"
    (call,) = [block for block in called.content if isinstance(block, ToolUseBlock)]
    assert call.name == "get_weather" and isinstance(call.input["city"], str)
    assert isinstance(call.input["celsius"], bool)
    # The call streamed: input_json_delta pieces the SDK assembles into the same input.
    with client.messages.stream(
        model=model,
        max_tokens=60,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    ) as stream:
        streamed = stream.get_final_message()
    (streamed_call,) = [block for block in streamed.content if isinstance(block, ToolUseBlock)]
    assert streamed.stop_reason == "tool_use" and streamed_call.input == call.input
    result: Any = [
        *ask,
        {"role": "assistant", "content": [block.model_dump() for block in called.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "It is 21 C and sunny."}],
        },
    ]
    answer = client.messages.create(
        model=model,
        max_tokens=24,
        messages=result,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens") and _text(answer)


def test_count_tokens_grows_with_the_prompt(client: anthropic.Anthropic, model: str) -> None:
    short = client.messages.count_tokens(model=model, messages=HELLO)
    longer: Any = [{"role": "user", "content": "Name three colors, then three animals, then three cities."}]
    long = client.messages.count_tokens(model=model, messages=longer, system="Answer briefly.")
    with_tools = client.messages.count_tokens(model=model, messages=HELLO, tools=[WEATHER])
    assert 0 < short.input_tokens < long.input_tokens and short.input_tokens < with_tools.input_tokens
    # The count is the prompt an answer would read.
    answered = client.messages.create(model=model, max_tokens=1, messages=HELLO)
    assert answered.usage.input_tokens + (answered.usage.cache_read_input_tokens or 0) == short.input_tokens


def test_a_stop_sequence_ends_the_answer_and_is_named(client: anthropic.Anthropic, model: str) -> None:
    ask: Any = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    free = _text(client.messages.create(model=model, max_tokens=24, messages=ask, extra_body=GREEDY))
    words = free.split()
    assert len(words) >= 3, free
    stop = words[2]  # a word the answer reaches after a few tokens
    cut = client.messages.create(
        model=model, max_tokens=24, messages=ask, extra_body=GREEDY, stop_sequences=[stop]
    )
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop), (free, _text(cut))
    assert stop not in _text(cut)


def test_an_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "not_found_error"


def test_an_image_block_and_a_server_tool_are_bad_requests_naming_them(
    client: anthropic.Anthropic, model: str
) -> None:
    image: Any = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=model,
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                   {"type": "image", "source": image}]}],
        )  # fmt: skip
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[1]" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match="web_search_20250305"):
        client.messages.create(
            model=model,
            max_tokens=8,
            messages=HELLO,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )


def test_a_request_the_proxy_rejects_is_answered_in_anthropics_shape(mesh: dict[str, NodeProcess]) -> None:
    r = httpx.post(
        f"{mesh['host'].api}/v1/messages",
        json={"model": "any", "max_tokens": 8},
        headers={"x-api-key": KEY},
        timeout=10,
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "messages" in body["error"]["message"]


def test_a_wrong_key_is_an_authentication_error(mesh: dict[str, NodeProcess], model: str) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        _client(mesh["host"], "wrong-key").messages.create(model=model, max_tokens=8, messages=HELLO)
    assert (
        isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "authentication_error"
    )


def test_the_beta_query_string_is_ignored(client: anthropic.Anthropic, model: str) -> None:
    message = client.beta.messages.create(model=model, max_tokens=8, messages=HELLO, extra_body=GREEDY)
    assert message.content and message.usage.output_tokens > 0
    count = client.beta.messages.count_tokens(model=model, messages=HELLO)
    assert count.input_tokens > 0


def test_a_client_node_answers_from_the_host(mesh: dict[str, NodeProcess], model: str) -> None:
    client = _client(mesh["client"], "unused")
    message = client.messages.create(model=model, max_tokens=8, messages=HELLO, extra_body=GREEDY)
    assert _text(message) and message.usage.output_tokens > 0
    with client.messages.stream(model=model, max_tokens=8, messages=HELLO, extra_body=GREEDY) as stream:
        assert "".join(stream.text_stream) == _text(stream.get_final_message())
    assert client.messages.count_tokens(model=model, messages=HELLO).input_tokens > 0
