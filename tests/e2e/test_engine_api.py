"""The serving engine through a real node: slots, prompt reuse, cancellation, the queue, and
the OpenAI surface agents use, driven by the official openai SDK and raw httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import NodeProcess, smollm2_path, wait_gone
from tests.tool_gguf import write_tool_capable_gguf

MODEL = "SmolLM2-135M"
CHAT = [{"role": "user", "content": "Name three colors."}]
NO_EOS = {"0": -100, "2": -100}  # <|endoftext|> and <|im_end|>: generate to max_tokens
# A stream that keeps a slot busy until the client leaves (or 900 tokens).
LONG_STREAM = {
    "model": MODEL,
    "prompt": "Count: 1, 2, 3,",
    "max_tokens": 900,
    "stream": True,
    "logit_bias": NO_EOS,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string", "maxLength": 20}},
            "required": ["tz"],
        },
    },
}


def _stop(node: NodeProcess) -> None:
    pids = [c.pid for c in node.children()]
    node.stop()
    assert wait_gone(pids) == [], "model server outlived its node"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(["--model", MODEL, "--ctx-size", "1024"], tmp_path_factory.mktemp("engine")).start()
    try:
        n.wait_serving()
        yield n
    finally:
        _stop(n)


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.api}/v1", api_key="unused", max_retries=0, timeout=120)


def _slots(node: NodeProcess) -> dict[str, Any]:
    (m,) = node.status()["models"]
    return dict(m["slots"])


def _wait_idle(node: NodeProcess, timeout: float = 10.0, generated: int | None = None) -> dict[str, Any]:
    """Slot figures once no slot is busy (and, if given, the engine has generated that many
    tokens in all: the figures refresh every half second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slots = _slots(node)
        if (
            slots.get("slots_busy") == 0
            and slots.get("queued") == 0
            and (generated is None or slots.get("generated_total") == generated)
        ):
            return slots
        time.sleep(0.1)
    raise AssertionError(f"slots still busy: {_slots(node)}")


# ---- slots and continuous batching --------------------------------------------------------


def test_four_simultaneous_streams_all_complete_equal_to_their_answers_alone(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "Once upon a time", "def fib(n):", "The three primary colors are"]
    alone = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0).choices[0].text
        for p in prompts
    ]
    results: dict[int, str] = {}
    finish: dict[int, str | None] = {}

    def stream(i: int) -> None:
        text = ""
        for chunk in client.completions.create(
            model=MODEL, prompt=prompts[i], max_tokens=24, temperature=0, stream=True
        ):
            if chunk.choices:
                text += chunk.choices[0].text
                finish[i] = chunk.choices[0].finish_reason or finish.get(i)
        results[i] = text

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Greedy decoding in a batch of four gives the same tokens as alone (measured here; no tolerance).
    assert [results[i] for i in range(4)] == alone
    assert all(alone) and set(finish.values()) == {"length"}


def test_a_second_turn_prefills_only_its_new_tokens(node: NodeProcess, client: openai.OpenAI) -> None:
    turn1 = [{"role": "user", "content": "Write one sentence about the sea."}]
    start = _wait_idle(node)
    first = client.chat.completions.create(model=MODEL, messages=turn1, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    assert first.usage is not None
    before = _wait_idle(node, generated=start["generated_total"] + first.usage.completion_tokens)
    turn2 = [
        *turn1,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And one about the mountains."},
    ]
    second = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    after = _wait_idle(node, generated=before["generated_total"] + second.usage.completion_tokens)
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    # The whole first prompt (and most of the answer) came from the slot's cache ...
    assert cached >= first.usage.prompt_tokens
    # ... and the engine decoded exactly the rest.
    assert after["prefilled_total"] - before["prefilled_total"] == second.usage.prompt_tokens - cached


def test_a_client_that_leaves_a_stream_frees_its_slot(node: NodeProcess) -> None:
    body = LONG_STREAM
    with httpx.stream("POST", f"{node.api}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any(line.startswith("data: ") for line in got)
        deadline = time.monotonic() + 10
        while _slots(node)["slots_busy"] != 1:
            assert time.monotonic() < deadline, "the stream never showed as a busy slot"
            time.sleep(0.05)
    _wait_idle(node)


def test_a_client_that_leaves_a_plain_request_frees_its_slot(node: NodeProcess) -> None:
    body = {**LONG_STREAM, "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{node.api}/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
    _wait_idle(node)


# ---- the OpenAI surface -----------------------------------------------------------------


def test_include_usage_sends_a_final_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 8 or chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])


def test_max_completion_tokens_limits_the_answer(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_completion_tokens=3,
        temperature=0,
        logit_bias={0: -100, 2: -100},  # type: ignore[arg-type]
    )
    assert r.usage is not None and r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


def test_roles_content_parts_and_assistant_tool_calls_are_accepted(client: openai.OpenAI) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "You answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the weather "},
                {"type": "text", "text": "in Paris?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "celsius": true}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert r.choices[0].message.content is not None


def test_image_parts_get_a_clear_400(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert "text" in str(info.value)


def test_sampling_options_seed_and_stop_strings(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 20}
    a = client.completions.create(
        **kw, temperature=1.0, top_p=0.9, seed=7, presence_penalty=0.5, frequency_penalty=0.5
    )
    b = client.completions.create(
        **kw, temperature=1.0, top_p=0.9, seed=7, presence_penalty=0.5, frequency_penalty=0.5
    )
    assert a.choices[0].text == b.choices[0].text
    extra = {"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.2}
    assert client.completions.create(**kw, temperature=0.7, seed=1, extra_body=extra).choices[0].text
    full = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=24, temperature=0
    )
    text = full.choices[0].text
    stop = "United States"  # several tokens: the match spans token boundaries
    assert stop in text
    cut = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=24, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL,
            prompt="The capital of France is",
            max_tokens=24,
            temperature=0,
            stop=[stop],
            stream=True,
        )
        if c.choices
    )
    assert streamed == cut.choices[0].text


def test_logit_bias_bans_a_token(client: openai.OpenAI) -> None:
    plain = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0, logprobs=1
    )
    assert plain.choices[0].logprobs is not None and plain.choices[0].logprobs.tokens
    first = plain.choices[0].logprobs.tokens[0]
    top = plain.choices[0].logprobs.top_logprobs
    assert top and first in top[0]


def test_completion_logprobs_have_text_offsets(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=1
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.text_offset
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_a_grammar_with_min_tokens_ends_when_the_grammar_is_complete(
    node: NodeProcess, client: openai.OpenAI
) -> None:
    pid = node.status()["models"][0]["pid"]
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Answer true or false."}],  # type: ignore[arg-type]
        max_tokens=30, temperature=0, extra_body={"min_tokens": 20},
        response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "boolean"}}},  # type: ignore[typeddict-item]
    )  # fmt: skip
    assert isinstance(json.loads(r.choices[0].message.content or ""), bool)
    assert node.status()["models"][0]["pid"] == pid  # the model server did not crash


def test_schemas_the_grammar_cannot_express_are_400s_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=4,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": []}}},  # type: ignore[typeddict-item]
        )  # fmt: skip
    assert isinstance(info.value.body, dict) and info.value.body["param"].startswith("response_format")
    bad_tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]},
        },
    }
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=CHAT, tools=[bad_tool], tool_choice="required", max_tokens=4
        )  # type: ignore[arg-type, list-item]
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "tools"


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 5
    for entry in lp.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely token


def test_an_answer_that_ends_has_one_logprob_per_completion_token(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=64, temperature=0, logprobs=True
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"  # ended by the end token, which gets no entry
    assert choice.logprobs is not None and choice.logprobs.content is not None and r.usage is not None
    assert len(choice.logprobs.content) == r.usage.completion_tokens
    assert "".join(e.token for e in choice.logprobs.content) == choice.message.content


def test_n_gives_n_choices_and_too_many_is_a_400(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=1.0, n=2)  # type: ignore[arg-type]
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage is not None and r.usage.completion_tokens >= 2
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, n=50)  # type: ignore[arg-type]


def test_models_by_id(client: openai.OpenAI) -> None:
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve("smollm2_135m").id == MODEL  # case and -/_ ignored, as in routing
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_an_over_long_prompt_is_a_400_before_any_stream(client: openai.OpenAI) -> None:
    long = "word " * 3000
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}], stream=True)  # type: ignore[arg-type]
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "context_length_exceeded"


def test_json_object_output_is_json(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],  # type: ignore[arg-type]
        max_tokens=200, temperature=0, response_format={"type": "json_object"},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


_leaf = st.sampled_from(
    [
        {"type": "boolean"},
        {"type": "integer", "minimum": 0, "maximum": 100},
        {"type": "string", "maxLength": 12},
        {"enum": ["red", "green", "blue"]},
        {"type": "null"},
    ]
)
_names = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
_schemas = st.recursive(
    _leaf,
    lambda inner: st.dictionaries(_names, inner, min_size=1, max_size=3).map(
        lambda props: {
            "type": "object",
            "properties": props,
            "required": sorted(props),
            "additionalProperties": False,
        }
    ),
    max_leaves=5,
).filter(lambda s: s.get("type") == "object")


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "object":
        props = schema["properties"]
        return (
            isinstance(value, dict)
            and set(value) == set(props)
            and all(_valid(value[k], props[k]) for k in props)
        )
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100
    if kind == "string":
        return isinstance(value, str) and len(value) <= 12
    return value is None


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(schema=_schemas)
def test_json_schema_output_is_valid_for_the_schema(client: openai.OpenAI, schema: dict[str, Any]) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Fill in the form."}],  # type: ignore[arg-type]
        max_tokens=300, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "form", "schema": schema, "strict": True}},  # type: ignore[typeddict-item]
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert _valid(json.loads(r.choices[0].message.content or ""), schema)


# ---- tool calling ---------------------------------------------------------------------


def _check_weather_call(call: Any) -> None:
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert (
        set(args) == {"city", "celsius"}
        and isinstance(args["city"], str)
        and isinstance(args["celsius"], bool)
    )


def test_tool_choice_required_always_calls_a_listed_tool(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather in Paris?"}],  # type: ignore[arg-type]
        tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=200,  # type: ignore[list-item]
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name in {"get_weather", "get_time"}  # type: ignore[union-attr]
    json.loads(call.function.arguments)  # type: ignore[union-attr]


def test_a_named_tool_choice_calls_that_tool_also_when_streamed(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {
        "model": MODEL, "messages": [{"role": "user", "content": "Weather in Oslo, please."}],
        "tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0, "max_tokens": 200,
    }  # fmt: skip
    r = client.chat.completions.create(**kw)
    assert r.choices[0].message.tool_calls and r.choices[0].finish_reason == "tool_calls"
    _check_weather_call(r.choices[0].message.tool_calls[0])
    name, args, finish = "", "", None
    for chunk in client.chat.completions.create(**kw, stream=True):
        if not chunk.choices:
            continue
        for d in chunk.choices[0].delta.tool_calls or []:
            name += d.function.name or "" if d.function else ""
            args += d.function.arguments or "" if d.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    assert json.loads(args) == json.loads(r.choices[0].message.tool_calls[0].function.arguments)  # type: ignore[union-attr]


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type, list-item]
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


@pytest.fixture(scope="module")
def tool_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """The demo model with a tool-capable (Hermes-style) chat template written into its GGUF."""
    root = tmp_path_factory.mktemp("tools")
    gguf = write_tool_capable_gguf(smollm2_path(), Path(root) / "smol-tools.gguf")
    n = NodeProcess(["--model", str(gguf), "--ctx-size", "2048", "--parallel", "2"], root / "state").start()
    try:
        n.wait_serving()
        yield n
    finally:
        _stop(n)


def test_auto_tool_calls_are_parsed_from_the_models_own_format(tool_node: NodeProcess) -> None:
    client = openai.OpenAI(base_url=f"{tool_node.api}/v1", api_key="unused", max_retries=0, timeout=120)
    (model,) = [m.id for m in client.models.list().data]
    # Three earlier turns show the model the format; greedy decoding then repeats it.
    call = '{"city": "%s", "celsius": true}'
    history: list[dict[str, Any]] = []
    for i, city in enumerate(["Paris", "Rome", "Madrid"]):
        history += [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call % city},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "20 C"},
            {"role": "assistant", "content": f"It is 20 C in {city}."},
        ]
    history.append({"role": "user", "content": "What is the weather in Berlin?"})
    kw: dict[str, Any] = {
        "model": model,
        "messages": history,
        "tools": [WEATHER],
        "temperature": 0,
        "max_tokens": 60,
    }
    r = client.chat.completions.create(**kw)
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message.content
    assert r.choices[0].message.tool_calls
    _check_weather_call(r.choices[0].message.tool_calls[0])
    # Streamed, the call arrives as tool-call deltas and no <tool_call> text leaks as content.
    content, args, finish = "", "", None
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            for d in chunk.choices[0].delta.tool_calls or []:
                args += (d.function.arguments or "") if d.function else ""
            finish = chunk.choices[0].finish_reason or finish
    assert "<tool_call>" not in content and finish == "tool_calls"
    assert json.loads(args) == json.loads(r.choices[0].message.tool_calls[0].function.arguments)  # type: ignore[union-attr]


# ---- limits, the queue and failures ------------------------------------------------------


def test_a_body_over_the_limit_is_a_413(node: NodeProcess) -> None:
    big = json.dumps({"model": MODEL, "prompt": "x" * (9 * 1024 * 1024)})
    r = httpx.post(
        f"{node.api}/v1/completions", content=big, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_huge_numbers_and_deep_nesting_are_400s(node: NodeProcess) -> None:
    for raw in ('{"model": "' + MODEL + '", "prompt": "x", "max_tokens": ' + "9" * 5000 + "}", "[" * 50000):
        r = httpx.post(
            f"{node.api}/v1/completions",
            content=raw,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_json", "invalid_value")


def test_sse_ends_with_done_and_nothing_after(node: NodeProcess) -> None:
    body = {
        "model": MODEL,
        "messages": CHAT,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{node.api}/v1/chat/completions", json=body, timeout=60) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1]["usage"]["completion_tokens"] >= 1


@pytest.fixture
def one_slot_node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(
        ["--model", MODEL, "--ctx-size", "1024", "--parallel", "1", "--max-queue", "1"], tmp_path
    ).start()
    try:
        n.wait_serving()
        yield n
    finally:
        _stop(n)


def test_a_full_queue_answers_503_with_retry_after_and_a_failure_mid_stream_ends_cleanly(
    one_slot_node: NodeProcess,
) -> None:
    body = LONG_STREAM
    url = f"{one_slot_node.api}/v1/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as running:
        lines = running.iter_lines()
        next(lines)
        with httpx.stream("POST", url, json=body, timeout=60) as waiting:
            deadline = time.monotonic() + 10
            while _slots(one_slot_node)["queued"] != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            full = httpx.post(url, json={**body, "stream": False}, timeout=30)
            assert full.status_code == 503, full.text
            assert full.headers["retry-after"] and full.json()["error"]["code"] == "server_busy"
            assert waiting.status_code == 200
        # The model server dies mid-answer: one error event, then [DONE], then nothing.
        (m,) = one_slot_node.status()["models"]
        import os
        import signal

        os.kill(m["pid"], signal.SIGKILL)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and rest.count("data: [DONE]") == 1
    assert "error" in json.loads(rest[-2][6:])


def test_the_model_server_answers_unknown_routes_and_wrong_methods_in_json(node: NodeProcess) -> None:
    (m,) = node.status()["models"]
    with httpx.Client(transport=httpx.HTTPTransport(uds=m["socket"]), base_url="http://localhost") as child:
        r = child.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
        r = child.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
