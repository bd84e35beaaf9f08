"""Anthropic Messages <-> chat, pure: requests, answers, streams and errors, checked against the
official `anthropic` SDK's own types and client so that the shapes cannot drift."""

from __future__ import annotations

import copy
import importlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import anthropic
import pydantic
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent

from mesh_llm.api.translate import CHAT_PATH, StreamTranslator, Translator, Turn
from mesh_llm.api.translate.anthropic import MessagesTranslator, anthropic_error, count_tokens_chat
from mesh_llm.http_errors import ApiError, ApiErrorResponse

MODEL = "SmolLM2-135M"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)
# The SDK's own HTTP library (httpx before anthropic 2, httpx2 since), for an in-memory transport.
HTTP: Any = importlib.import_module(anthropic.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


def _ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}{next(counter)}"


def _translator() -> MessagesTranslator:
    return MessagesTranslator(_ids())


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}], **fields}


def _chat(**fields: Any) -> dict[str, Any]:
    return _translator().begin(_body(**fields)).chat


def _rejected(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiErrorResponse) as caught:
        _translator().begin(body)
    return caught.value.error


def test_the_translator_meets_the_seams_protocols() -> None:
    translator: Translator = _translator()
    turn: Turn = translator.begin(_body())
    stream: StreamTranslator = turn.stream()
    assert turn.path == CHAT_PATH and turn.fallback is None and stream is not None


# ── requests ──────────────────────────────────────────────────────────────────────────────────


def test_a_plain_request_becomes_a_chat_body_with_the_model_as_given() -> None:
    chat = _chat(system="Be brief.", temperature=0.2, top_p=0.9, top_k=20, stop_sequences=["END", "\n\n"])
    assert chat == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 32,
        "stop": ["END", "\n\n"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
        "stream": False,
    }


def test_system_and_user_text_blocks_are_joined_into_one_message_each() -> None:
    chat = _chat(
        system=[
            {"type": "text", "text": "One."},
            {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        ],
    )
    assert chat["messages"] == [
        {"role": "system", "content": "One.\n\nTwo."},
        {"role": "user", "content": "a\n\nb"},
    ]


def test_a_tool_round_trip_becomes_tool_calls_then_tool_messages_before_the_users_text() -> None:
    chat = _chat(
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should call the tool.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Looking it up."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here you go."},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "no such"}, {"type": "text", "text": "city"}],
                        "is_error": True,
                    },
                ],
            },
        ],
        tools=[WEATHER],
    )
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Looking it up.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "toolu_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such\n\ncity"},
        {"role": "user", "content": "Here you go."},
    ]  # fmt: skip
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"],
                                          "description": "Current weather in a city"}}
    ]  # fmt: skip


def test_a_turn_of_only_tool_results_adds_no_user_message_and_an_assistant_string_is_kept() -> None:
    chat = _chat(
        messages=[
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c"}]},
            {"role": "assistant", "content": "Done"},
        ],
    )
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": ""},
        {"role": "assistant", "content": "Done"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "tool", "name": "get_weather"},
         {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        ({"type": "auto", "disable_parallel_tool_use": True},
         {"tool_choice": "auto", "parallel_tool_calls": False}),
        ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
    ],
)  # fmt: skip
def test_tool_choice_becomes_chats_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = _chat(tools=[WEATHER], tool_choice=choice)
    assert {k: chat[k] for k in ("tool_choice", "parallel_tool_calls") if k in chat} == expected


def test_a_custom_typed_tool_is_a_function_tool_and_its_description_is_optional() -> None:
    chat = _chat(tools=[{"type": "custom", "name": "t", "input_schema": {"type": "object"}}])
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
    ]
    assert "tool_choice" not in chat  # chat's default with tools is auto, as Anthropic's is


def test_metadata_thinking_and_unknown_fields_are_accepted_and_left_out() -> None:
    for thinking in ({"type": "enabled", "budget_tokens": 2048}, {"type": "disabled"}, {"type": "adaptive"}):
        chat = _chat(metadata={"user_id": "u1"}, thinking=thinking, service_tier="auto", future_field=[1])
        assert set(chat) == {"model", "messages", "max_tokens", "stream"}


def test_a_stream_asks_for_the_usage_chunk() -> None:
    chat = _chat(stream=True)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def _without(key: str) -> dict[str, Any]:
    body = _body()
    del body[key]
    return body


def _user(*blocks: Any) -> dict[str, Any]:
    return _body(messages=[{"role": "user", "content": list(blocks)}])


def _assistant(*blocks: Any) -> dict[str, Any]:
    return _body(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": list(blocks)}])


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
BAD_REQUESTS = [
    (_without("max_tokens"), "max_tokens", "required"),
    (_body(max_tokens=0), "max_tokens", "at least 1"),
    (_body(max_tokens="32"), "max_tokens", "integer"),
    (_without("model"), "model", "model"),
    (_without("messages"), "messages", "non-empty"),
    (_body(messages=[]), "messages", "non-empty"),
    (_body(messages=["Hi"]), "messages[0]", "object"),
    (_body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "'user', 'assistant' or 'system'"),
    (_body(messages=[{"role": "system", "content": 3}]), "messages[0].content", "string or an array"),
    (_body(messages=[{"role": "user"}]), "messages[0].content", "required"),
    (_body(messages=[{"role": "user", "content": []}]), "messages[0].content", "non-empty"),
    (_body(messages=[{"role": "user", "content": 7}]), "messages[0].content", "string"),
    (_user({"type": "text", "text": "look"}, IMAGE), "messages[0].content[1]", "'image' block"),
    (_user(DOCUMENT), "messages[0].content[0]", "'document' block"),
    (_user({"type": "tool_result", "tool_use_id": "c", "content": [IMAGE]}),
     "messages[0].content[0].content[0]", "'image' block"),
    (_user({"type": "tool_result", "content": "x"}), "messages[0].content[0].tool_use_id", "non-empty"),
    (_user({"type": "tool_result", "tool_use_id": "c", "content": 5}),
     "messages[0].content[0].content", "string"),
    (_user({"type": "tool_result", "tool_use_id": "c", "is_error": "yes"}),
     "messages[0].content[0].is_error", "true or false"),
    (_user({"type": "text"}), "messages[0].content[0].text", "string"),
    (_user({"text": "no type"}), "messages[0].content[0]", "'type'"),
    (_user({"type": "tool_use", "id": "c", "name": "t", "input": {}}),
     "messages[0].content[0].type", "'tool_use'"),
    (_assistant({"type": "tool_use", "name": "t", "input": {}}), "messages[1].content[0].id", "non-empty"),
    (_assistant({"type": "tool_use", "id": "c", "input": {}}), "messages[1].content[0].name", "non-empty"),
    (_assistant({"type": "tool_use", "id": "c", "name": "t", "input": "{}"}),
     "messages[1].content[0].input", "object"),
    (_assistant({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}),
     "messages[1].content[0].type", "'server_tool_use'"),
    (_body(system=7), "system", "string"),
    (_body(system=[IMAGE]), "system[0]", "'image' block"),
    (_body(tools={"name": "t"}), "tools", "array"),
    (_body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
     "tools[0].type", "web_search_20250305"),
    (_body(tools=[WEATHER, {"type": "bash_20250124", "name": "bash"}]), "tools[1].type", "bash_20250124"),
    (_body(tools=[{"name": "t"}]), "tools[0].input_schema", "JSON schema"),
    (_body(tools=[{"input_schema": {}}]), "tools[0].name", "non-empty"),
    (_body(tools=[{**WEATHER, "description": 3}]), "tools[0].description", "string"),
    (_body(tools=[WEATHER], tool_choice="auto"), "tool_choice", "'type'"),
    (_body(tools=[WEATHER], tool_choice={"type": "required"}), "tool_choice", "'type'"),
    (_body(tool_choice={"type": "any"}), "tool_choice", "non-empty 'tools'"),
    (_body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "tool_choice.name", "'nope'"),
    (_body(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
     "tool_choice.disable_parallel_tool_use", "true or false"),
    (_body(stop_sequences="END"), "stop_sequences", "array of strings"),
    (_body(stop_sequences=["a", 1]), "stop_sequences", "array of strings"),
    (_body(temperature=1.5), "temperature", "between 0 and 1"),
    (_body(temperature="hot"), "temperature", "number"),
    (_body(top_p=-0.1), "top_p", "between 0 and 1"),
    (_body(top_k=-1), "top_k", "at least 0"),
    (_body(top_k=2.5), "top_k", "integer"),
    (_body(stream="yes"), "stream", "true or false"),
    (_body(metadata="m"), "metadata", "object"),
    (_body(thinking={"type": "enabled"}), "thinking.budget_tokens", "positive integer"),
    (_body(thinking={"type": "sometimes"}), "thinking", "'enabled'"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param", "words"), BAD_REQUESTS, ids=[p for _, p, _ in BAD_REQUESTS])
def test_a_bad_request_is_a_400_naming_the_field(body: dict[str, Any], param: str, words: str) -> None:
    error = _rejected(body)
    assert (error.status, error.param) == (400, param)
    assert words in error.message
    assert param.split(".")[0].split("[")[0] in error.message
    assert anthropic_error(error)["error"]["type"] == "invalid_request_error"


def test_translating_leaves_the_request_body_untouched() -> None:
    body = _body(
        system=[{"type": "text", "text": "s"}], tools=[WEATHER], tool_choice={"type": "any"}, stream=True
    )
    before = copy.deepcopy(body)
    _translator().begin(body)
    assert body == before


def test_count_tokens_needs_no_max_tokens_and_renders_system_messages_and_tools() -> None:
    body = _without("max_tokens") | {
        "system": "Be brief.",
        "tools": [WEATHER],
        "tool_choice": {"type": "auto"},
    }
    chat = count_tokens_chat(body)
    assert chat["model"] == MODEL
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    assert "stream" not in chat and "max_tokens" not in chat
    with pytest.raises(ApiErrorResponse) as caught:
        count_tokens_chat(_user(IMAGE))
    assert caught.value.error.param == "messages[0].content[0]"


# ── answers ───────────────────────────────────────────────────────────────────────────────────


def _completion(message: dict[str, Any], finish: str | None = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "SmolLM2-135M-Instruct-Q8_0",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
    }


def _answer(chat: dict[str, Any], **fields: Any) -> dict[str, Any]:
    answer = _translator().begin(_body(**fields)).answer(chat)
    Message.model_validate(answer)  # the SDK's own type: strict about required fields and literals
    return answer


def test_a_text_answer_is_a_message_with_one_text_block() -> None:
    answer = _answer(_completion({"content": "Hello there."}))
    assert answer == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello there."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 7, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0},
    }  # fmt: skip


def test_reasoning_text_and_calls_come_back_as_thinking_text_and_tool_use_blocks_in_order() -> None:
    calls = [
        {
            "id": "call_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
    ]
    message = {"content": "Checking.", "reasoning_content": "Use the tool.", "tool_calls": calls}
    answer = _answer(_completion(message, "tool_calls"))
    assert answer["content"] == [
        {"type": "thinking", "thinking": "Use the tool.", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    ]
    assert answer["stop_reason"] == "tool_use" and answer["id"] == "msg_2"


def test_a_call_alone_leaves_the_empty_text_out_and_bad_arguments_are_kept_as_text() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "t", "arguments": "not json"}}]
    answer = _answer(_completion({"content": None, "tool_calls": calls}, "tool_calls"))
    assert answer["content"] == [
        {"type": "tool_use", "id": "c", "name": "t", "input": {"arguments": "not json"}}
    ]


@pytest.mark.parametrize(
    ("finish", "choice", "stops", "reason", "sequence"),
    [
        ("stop", {}, [], "end_turn", None),
        ("length", {}, [], "max_tokens", None),
        ("tool_calls", {}, [], "tool_use", None),
        ("stop", {"stop_reason": "END"}, ["END"], "stop_sequence", "END"),
        ("stop", {"stop_reason": "END"}, ["OTHER"], "end_turn", None),  # only the request's own
        ("stop", {"stop_reason": 2}, [], "end_turn", None),  # vLLM's token id for an EOS stop
        (None, {}, [], "end_turn", None),
        ("content_filter", {}, [], "refusal", None),
    ],
)  # fmt: skip
def test_each_finish_reason_has_its_stop_reason(
    finish: str | None, choice: dict[str, Any], stops: list[str], reason: str, sequence: str | None
) -> None:
    answer = _answer(_completion({"content": "x"}, finish, **choice), stop_sequences=stops)
    assert (answer["stop_reason"], answer["stop_sequence"]) == (reason, sequence)


def test_cached_prompt_tokens_are_cache_reads_not_input_tokens() -> None:
    chat = _completion({"content": "x"})
    chat["usage"]["prompt_tokens_details"] = {"cached_tokens": 12}
    assert _answer(chat)["usage"] == {"input_tokens": 8, "output_tokens": 7, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 12}  # fmt: skip


def test_an_empty_answer_is_a_message_with_no_blocks() -> None:
    answer = _answer(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
    )
    assert answer["content"] == [] and answer["usage"]["input_tokens"] == 0


# ── streams ───────────────────────────────────────────────────────────────────────────────────


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **choice}],
    }


def _usage_chunk(prompt: int = 20, completion: int = 7, cached: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    }  # fmt: skip


def _run(chunks: list[dict[str, Any]], *, end: bool = True, **fields: Any) -> bytes:
    stream = _translator().begin(_body(stream=True, **fields)).stream()
    out = [event for chunk in chunks for event in stream.feed(chunk)]
    out += stream.end() if end else []
    return b"".join(out)


def _events(raw: bytes) -> list[dict[str, Any]]:
    """Parse SSE bytes; each event's name must match its data's type, and the data the SDK's type."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][len("data: ") :])
        assert data["type"] == lines[0][len("event: ") :]
        if data["type"] == "error":
            ErrorResponse.model_validate(data)
        else:
            EVENTS.validate_python(data)
        events.append(data)
    return events


def _sequence(events: list[dict[str, Any]]) -> list[str]:
    names = []
    for e in events:
        delta = e.get("delta", {}).get("type", "") if e["type"] == "content_block_delta" else ""
        block = e["content_block"]["type"] if e["type"] == "content_block_start" else ""
        index = f"[{e['index']}]" if "index" in e else ""
        names.append(e["type"] + index + (f":{delta}" if delta else "") + (f":{block}" if block else ""))
    return names


def test_a_text_stream_is_message_start_one_text_block_message_delta_and_message_stop() -> None:
    events = _events(_run([_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hel"}),
                           _chunk({"content": "lo"}), _chunk(finish="stop"), _usage_chunk()]))  # fmt: skip
    assert _sequence(events) == [
        "message_start", "content_block_start[0]:text", "content_block_delta[0]:text_delta",
        "content_block_delta[0]:text_delta", "content_block_stop[0]", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0]["message"]
    assert (start["id"], start["model"], start["content"], start["stop_reason"]) == ("msg_1", MODEL, [], None)
    assert [e["delta"]["text"] for e in events[2:4]] == ["Hel", "lo"]
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["usage"] == {"input_tokens": 20, "output_tokens": 7, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0}  # fmt: skip


def test_thinking_then_text_then_calls_streamed_in_pieces_each_get_their_own_block() -> None:
    chunks = [
        _chunk({"reasoning_content": "Think"}),
        _chunk({"reasoning_content": "ing."}),
        _chunk({"content": "Calling."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Rome"}'}}]}),
        _chunk(finish="tool_calls"),
        _usage_chunk(),
    ]  # fmt: skip
    events = _events(_run(chunks, tools=[WEATHER]))
    assert _sequence(events) == [
        "message_start",
        "content_block_start[0]:thinking", "content_block_delta[0]:thinking_delta",
        "content_block_delta[0]:thinking_delta", "content_block_stop[0]",
        "content_block_start[1]:text", "content_block_delta[1]:text_delta", "content_block_stop[1]",
        "content_block_start[2]:tool_use", "content_block_delta[2]:input_json_delta",
        "content_block_delta[2]:input_json_delta", "content_block_stop[2]",
        "content_block_start[3]:tool_use", "content_block_delta[3]:input_json_delta", "content_block_stop[3]",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[8]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_weather",
        "input": {},
    }
    assert "".join(e["delta"]["partial_json"] for e in events[9:11]) == '{"city": "Paris"}'
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_a_call_sent_whole_by_an_older_host_is_one_block_with_one_json_delta() -> None:
    chunks = [
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}),
        _chunk(finish="tool_calls"),
    ]  # fmt: skip
    events = _events(_run(chunks))
    assert _sequence(events) == [
        "message_start", "content_block_start[0]:tool_use", "content_block_delta[0]:input_json_delta",
        "content_block_stop[0]", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[2]["delta"]["partial_json"] == '{"city": "Oslo"}'
    # No usage chunk came: the counts are zero rather than missing.
    assert events[-2]["usage"]["output_tokens"] == 0


def test_a_call_without_an_id_gets_a_toolu_id() -> None:
    events = _events(
        _run([_chunk({"tool_calls": [{"index": 0, "function": {"name": "t", "arguments": "{}"}}]})])
    )
    assert events[1]["content_block"]["id"] == "toolu_2"  # msg_1 was the message's


@pytest.mark.parametrize(
    ("last", "stops", "reason", "sequence"),
    [
        (_chunk(finish="length"), [], "max_tokens", None),
        (_chunk(finish="stop", stop_reason="###"), ["###"], "stop_sequence", "###"),
        (_chunk(finish="stop", stop_reason="###"), [], "end_turn", None),
    ],
)  # fmt: skip
def test_the_stream_ends_with_the_stop_reason_of_its_finish(
    last: dict[str, Any], stops: list[str], reason: str, sequence: str | None
) -> None:
    events = _events(
        _run([_chunk({"content": "x"}), last, _usage_chunk(20, 7, cached=5)], stop_sequences=stops)
    )
    assert events[-2]["delta"] == {"stop_reason": reason, "stop_sequence": sequence}
    assert (events[-2]["usage"]["input_tokens"], events[-2]["usage"]["cache_read_input_tokens"]) == (15, 5)


def test_an_empty_stream_still_starts_and_stops_the_message() -> None:
    assert _sequence(_events(_run([]))) == ["message_start", "message_delta", "message_stop"]


def test_a_failure_mid_stream_ends_with_an_error_event_and_nothing_after() -> None:
    stream = _translator().begin(_body(stream=True)).stream()
    broken = "The model server stopped in the middle of the answer."
    raw = b"".join(stream.feed(_chunk({"content": "Hal"})) + stream.fail(ApiError(502, broken)))
    assert (
        stream.feed(_chunk({"content": "f"})) == []
        and stream.end() == []
        and stream.fail(ApiError(500, "x")) == []
    )
    events = _events(raw)
    assert _sequence(events)[-1] == "error"
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message": broken}}


def test_nothing_follows_message_stop() -> None:
    stream = _translator().begin(_body(stream=True)).stream()
    stream.end()
    assert (
        stream.feed(_chunk({"content": "late"})) == []
        and stream.end() == []
        and stream.fail(ApiError(503, "x")) == []
    )


def test_a_failure_before_any_chunk_is_the_error_event_alone() -> None:
    stream = _translator().begin(_body(stream=True)).stream()
    events = _events(b"".join(stream.fail(ApiError(503, "busy"))))
    assert events == [{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}]


# ── errors ────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
        (404, "not_found_error"), (405, "invalid_request_error"), (413, "request_too_large"),
        (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"),
        (504, "timeout_error"), (529, "overloaded_error"),
    ],
)  # fmt: skip
def test_errors_take_anthropics_type_for_their_status(status: int, kind: str) -> None:
    body = _translator().error_body(ApiError(status, "what went wrong"))
    assert body == {"type": "error", "error": {"type": kind, "message": "what went wrong"}}


# ── the SDK itself reads what we write ────────────────────────────────────────────────────────


def _client(status: int, content: bytes, content_type: str = "application/json") -> anthropic.Anthropic:
    """The official client, answered in memory with `content` through its own HTTP library."""

    def handler(request: Any) -> Any:
        return HTTP.Response(status, content=content, headers={"content-type": content_type})

    http = anthropic.DefaultHttpxClient(transport=HTTP.MockTransport(handler))
    return anthropic.Anthropic(api_key="k", base_url="http://node", http_client=http, max_retries=0)


def test_the_sdk_reads_a_translated_answer() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    answer = (
        _translator()
        .begin(_body())
        .answer(_completion({"content": "Hm.", "tool_calls": calls}, "tool_calls"))
    )
    message = _client(200, json.dumps(answer).encode()).messages.create(
        model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "Hi"}]
    )
    assert [block.type for block in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert isinstance(tool, anthropic.types.ToolUseBlock) and tool.input == {"city": "Oslo"}
    assert message.stop_reason == "tool_use" and message.usage.input_tokens == 20


def test_the_sdks_stream_helper_rebuilds_the_whole_message_from_the_events() -> None:
    chunks = [
        _chunk({"reasoning_content": "Hmm."}),
        _chunk({"content": "Cold"}),
        _chunk({"content": " there."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"ci'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
        _chunk(finish="tool_calls"),
        _usage_chunk(30, 9, cached=10),
    ]  # fmt: skip
    client = _client(200, _run(chunks), "text/event-stream")
    with client.messages.stream(
        model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Cold there."
    assert [block.type for block in final.content] == ["thinking", "text", "tool_use"]
    thinking, _, tool = final.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock) and thinking.thinking == "Hmm."
    assert isinstance(tool, anthropic.types.ToolUseBlock) and tool.input == {"city": "Oslo"}
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("tool_use", 20, 9)
    assert final.usage.cache_read_input_tokens == 10


def test_the_sdk_raises_a_mid_stream_error_event() -> None:
    stream = _translator().begin(_body(stream=True)).stream()
    raw = b"".join(
        stream.feed(_chunk({"content": "Hal"})) + stream.fail(ApiError(503, "The host went away."))
    )
    client = _client(200, raw, "text/event-stream")
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(
            model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "Hi"}]
        ) as s:
            s.get_final_message()
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError), (401, anthropic.AuthenticationError),
        (403, anthropic.PermissionDeniedError), (404, anthropic.NotFoundError),
        (413, anthropic.RequestTooLargeError), (429, anthropic.RateLimitError),
        (502, anthropic.InternalServerError), (503, anthropic.InternalServerError),
    ],
)  # fmt: skip
def test_the_sdk_raises_its_own_exception_for_each_error(status: int, exception: type[Exception]) -> None:
    body = anthropic_error(ApiError(status, "what went wrong"))
    with pytest.raises(exception) as caught:
        _client(status, json.dumps(body).encode()).messages.create(
            model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "Hi"}]
        )
    assert isinstance(caught.value, anthropic.APIStatusError) and caught.value.body == body
    if status != 413:  # the SDK's error union has no request_too_large, though the API sends it
        ErrorResponse.model_validate(body)


def test_a_system_message_inside_messages_stays_in_place() -> None:
    turn = MessagesTranslator(_ids()).begin(
        _body(
            system="Top.",
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "system", "content": [{"type": "text", "text": "Agents: none."}]},
                {"role": "user", "content": "Go"},
            ],
        )
    )
    assert turn.chat["messages"] == [
        {"role": "system", "content": "Top."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Agents: none."},
        {"role": "user", "content": "Go"},
    ]
