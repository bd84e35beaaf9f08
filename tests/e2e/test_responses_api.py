"""OpenAI Responses (`/v1/responses`) through real nodes, driven by the official openai SDK:
plain and streamed answers, a function tool round trip, structured output, chains by
previous_response_id, errors, and a --client node whose model is on another node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.harness import NodeProcess, smollm2_path, stop_all, wait_gone
from tests.tool_gguf import write_tool_capable_gguf

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    },
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
GREEDY: Any = {"temperature": 0, "max_output_tokens": 24}
FORCED: Any = {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}, "temperature": 0,
               "max_output_tokens": 60}  # fmt: skip


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, str]]:
    """The demo model with a tool-capable chat template, and its invite token."""
    root = tmp_path_factory.mktemp("responses")
    gguf = write_tool_capable_gguf(smollm2_path(), root / "smol-tools.gguf")
    node = NodeProcess(["--model", str(gguf), "--ctx-size", "2048", "--parallel", "2"], root / "host").start()
    try:
        token = node.wait_serving()["invite_token"]
        yield node, token
    finally:
        pids = [c.pid for c in node.children()]
        node.stop()
        assert wait_gone(pids) == [], "model server outlived its node"


def _client(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.api}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(host: tuple[NodeProcess, str]) -> openai.OpenAI:
    return _client(host[0])


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    (name,) = [m.id for m in client.models.list().data]
    return name


def _check_usage(r: Any) -> None:
    assert r.usage is not None
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_create_answers_a_plain_text_response(client: openai.OpenAI, model: str) -> None:
    r = client.responses.create(model=model, input="Say hello.", instructions="You are friendly.", **GREEDY)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == model
    assert r.status in ("completed", "incomplete")
    assert r.output[-1].type == "message" and r.output_text
    assert r.instructions == "You are friendly." and r.max_output_tokens == 24
    _check_usage(r)


def test_stream_sends_numbered_events_that_add_up_to_the_created_answer(
    client: openai.OpenAI, model: str
) -> None:
    whole = client.responses.create(model=model, input="Name a color.", **GREEDY)
    with client.responses.stream(model=model, input="Name a color.", **GREEDY) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text and final.output_text == text == whole.output_text
    assert final.status == whole.status
    _check_usage(final)


def test_a_forced_function_call_round_trip_through_previous_response_id(
    client: openai.OpenAI, model: str
) -> None:
    first = client.responses.create(model=model, input="What is the weather in Paris?", **FORCED)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", first.output
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    assert calls[0].call_id and calls[0].id and calls[0].id.startswith("fc_")

    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "20 C and sunny"}],
        tools=[WEATHER],
        tool_choice="none",
        **GREEDY,
    )
    assert second.previous_response_id == first.id
    assert second.output[-1].type == "message" and second.output_text
    # The question and the call were replayed before the output: more tokens than the output alone.
    alone = client.responses.create(
        model=model, input="20 C and sunny", tools=[WEATHER], tool_choice="none", **GREEDY
    )
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens


def test_a_forced_call_streams_as_argument_deltas(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="Weather in Rome?", **FORCED) as stream:
        events = list(stream)
        final = stream.get_final_response()
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert pieces == done.arguments == call.arguments and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)


def test_json_schema_text_format_gives_output_that_matches_the_schema(
    client: openai.OpenAI, model: str
) -> None:
    r = client.responses.create(
        model=model,
        input="Invent a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        temperature=0,
        max_output_tokens=60,
    )
    assert r.status == "completed", r.output_text
    person = json.loads(r.output_text)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 120
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"


def test_previous_response_id_replays_the_earlier_turn(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, input="My name is Ada.", **GREEDY)
    follow = client.responses.create(
        model=model, input="What is my name?", previous_response_id=first.id, **GREEDY
    )
    alone = client.responses.create(model=model, input="What is my name?", **GREEDY)
    assert follow.usage is not None and alone.usage is not None and first.usage is not None
    assert follow.usage.input_tokens > alone.usage.input_tokens
    assert follow.usage.input_tokens >= first.usage.input_tokens + first.usage.output_tokens
    # A chain goes on from any of its responses.
    third = client.responses.create(model=model, input="Thanks.", previous_response_id=follow.id, **GREEDY)
    assert third.usage is not None and third.usage.input_tokens > follow.usage.input_tokens


def test_an_unknown_previous_response_id_is_a_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=model, input="Hi", previous_response_id="resp_unknown")
    error = info.value.response.json()["error"]
    assert error["code"] == "previous_response_not_found" and error["param"] == "previous_response_id"


def test_an_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="Hi")
    assert info.value.response.json()["error"]["code"] == "model_not_found"


def test_a_hosted_tool_is_a_400_that_names_it(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=model, input="Hi", tools=[{"type": "web_search"}])
    assert "web_search" in info.value.response.json()["error"]["message"]


def test_a_client_node_serves_responses_for_a_model_on_another_node(
    host: tuple[NodeProcess, str], model: str, tmp_path: Path
) -> None:
    node, token = host
    c = NodeProcess(["--client", "--join", token], tmp_path / "c").start()
    try:
        c.wait_for(lambda s: any(m["ready"] for m in s["models"]), 60, "the host's model on C")
        client = _client(c)
        first = client.responses.create(model=model, input="My name is Ada.", **GREEDY)
        assert first.output_text and first.status in ("completed", "incomplete")
        # The client node keeps its own clients' chains.
        follow = client.responses.create(
            model=model, input="My name?", previous_response_id=first.id, **GREEDY
        )
        assert follow.usage is not None and first.usage is not None
        assert follow.usage.input_tokens > first.usage.input_tokens
        with client.responses.stream(model=model, input="Name a color.", **GREEDY) as stream:
            kinds = [e.type for e in stream]
        assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
        routed = {m["host"]: m["requests"] for m in c.status()["models"]}
        assert routed == {node.status()["node_id"]: 3}
    finally:
        stop_all([c])
