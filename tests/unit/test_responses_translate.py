"""The OpenAI Responses translator: requests to chat, chat answers and streams to Responses,
and previous_response_id chains. Every answer and event is checked against the openai SDK's
own pydantic types, so the shapes cannot drift from what clients parse."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from mesh_llm.api.translate import CHAT_PATH
from mesh_llm.api.translate.responses import ResponsesTranslator, ResponsesTurn
from mesh_llm.http_errors import ApiError, ApiErrorResponse

MODEL = "SmolLM2-135M"
EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def counting_ids() -> Any:
    counters: dict[str, Iterator[int]] = defaultdict(itertools.count)
    return lambda prefix: f"{prefix}{next(counters[prefix])}"


def make(clock: Clock | None = None, **bounds: Any) -> ResponsesTranslator:
    return ResponsesTranslator(counting_ids(), clock or Clock(), **bounds)


def begin(tr: ResponsesTranslator, **body: Any) -> ResponsesTurn:
    return tr.begin({"model": MODEL, **body})


def rejected(tr: ResponsesTranslator, **body: Any) -> ApiError:
    with pytest.raises(ApiErrorResponse) as info:
        tr.begin({"model": MODEL, **body})
    assert info.value.error.status == 400
    return info.value.error


def chat_answer(
    content: str | None = "Hello!",
    *,
    reasoning: str | None = None,
    calls: tuple[tuple[str, str, str], ...] = (),
    finish: str = "stop",
    prompt: int = 12,
    completion: int = 5,
    cached: int = 0,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in calls
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": MODEL,
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
}


def events(raw: list[bytes]) -> list[dict[str, Any]]:
    """Parse SSE events, checking each one's framing and its shape against the SDK's union."""
    out = []
    for frame in raw:
        text = frame.decode()
        assert text.endswith("\n\n") and text.count("\n\n") == 1, text
        name_line, data_line = text.strip().split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        event = json.loads(data_line[len("data: ") :])
        assert event["type"] == name_line[len("event: ") :]
        EVENT.validate_python(event)
        out.append(event)
    return out


def run_stream(turn: ResponsesTurn, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stream = turn.stream()
    raw = [b for c in chunks for b in stream.feed(c)] + stream.end()
    got = events(raw)
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    return got


def chat_messages(turn: ResponsesTurn) -> list[dict[str, Any]]:
    return list(turn.chat["messages"])


# ---- requests to chat ----------------------------------------------------------------------


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    turn = begin(make(), input="Hi there", instructions="Be brief.")
    assert turn.chat == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        "stream": False,
    }
    assert turn.path == CHAT_PATH and turn.fallback is None


def test_message_items_take_text_parts_and_developer_is_a_system_message() -> None:
    turn = begin(
        make(),
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Hello, "}, {"type": "input_text", "text": "world"}]},
            {"type": "message", "role": "assistant", "id": "msg_x", "status": "completed",
             "content": [{"type": "output_text", "text": "Bonjour", "annotations": []}]},
            {"role": "system", "content": [{"type": "input_text", "text": "Stay kind."}]},
        ],
    )  # fmt: skip
    assert chat_messages(turn) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello, world"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "system", "content": "Stay kind."},
    ]


def test_function_calls_join_one_assistant_turn_and_outputs_become_tool_messages() -> None:
    turn = begin(
        make(),
        input=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking."}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "20 C"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "25 C"}],
            },
        ],
    )
    assert chat_messages(turn) == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "20 C"},
        {"role": "tool", "tool_call_id": "c2", "name": "get_weather", "content": "25 C"},
    ]


def test_a_call_after_a_user_message_opens_an_assistant_turn_with_no_text() -> None:
    turn = begin(
        make(),
        input=[
            {"role": "user", "content": "Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        ],
    )
    assert chat_messages(turn)[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ],
    }


def test_flat_function_tools_become_chat_tools_with_choice_and_parallel_calls() -> None:
    turn = begin(make(), input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
                 parallel_tool_calls=False)  # fmt: skip
    assert turn.chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert turn.chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert turn.chat["parallel_tool_calls"] is False
    for choice in ("auto", "none", "required"):
        assert begin(make(), input="x", tools=[WEATHER], tool_choice=choice).chat["tool_choice"] == choice
    assert "tool_choice" not in begin(make(), input="x", tools=[WEATHER]).chat


def test_text_formats_become_response_formats() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "name": "count", "schema": schema, "strict": True}
    assert begin(make(), input="x", text={"format": fmt}).chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "count", "schema": schema, "strict": True},
    }
    assert begin(make(), input="x", text={"format": {"type": "json_object"}}).chat["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in begin(make(), input="x", text={"format": {"type": "text"}}).chat


def test_sampling_fields_and_max_output_tokens_reach_chat_and_the_rest_stays_here() -> None:
    turn = begin(
        make(),
        input="x",
        max_output_tokens=40,
        temperature=0,
        top_p=0.5,
        seed=7,
        reasoning={"effort": "low", "summary": "auto"},
        metadata={"k": "v"},
        user="u1",
        store=False,
        truncation="auto",
        some_future_field={"x": 1},
    )
    assert turn.chat == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "stream": False,
        "max_tokens": 40,
        "temperature": 0,
        "top_p": 0.5,
        "seed": 7,
    }


def test_a_stream_asks_chat_for_its_usage_chunk() -> None:
    turn = begin(make(), input="x", stream=True)
    assert turn.chat["stream"] is True and turn.chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": None, "input": "x"}, "model"),
        ({"input": 5}, "input"),
        ({}, "input"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "instructions": 5}, "instructions"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "tools": {"type": "function"}}, "tools"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
         "tool_choice.name"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "audio_blob"}]}]}, "input[0].content[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]}, "input[0].call_id"),
        ({"input": "x", "metadata": "m"}, "metadata"),
        ({"input": "x", "previous_response_id": 12}, "previous_response_id"),
    ],
)  # fmt: skip
def test_bad_requests_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    tr = make()
    with pytest.raises(ApiErrorResponse) as info:
        tr.begin({"model": MODEL, **body})
    assert info.value.error.status == 400 and info.value.error.param == param, info.value.error


@pytest.mark.parametrize("part", ["input_image", "input_file", "input_audio"])
def test_media_parts_get_a_clear_400(part: str) -> None:
    error = rejected(
        make(), input=[{"role": "user", "content": [{"type": "input_text", "text": "see"}, {"type": part}]}]
    )
    assert error.param == "input[0].content[1]" and error.code == "unsupported_content"
    assert part in error.message and "text only" in error.message


def test_hosted_tools_get_one_400_naming_each_of_them() -> None:
    error = rejected(
        make(),
        input="x",
        tools=[
            WEATHER,
            {"type": "web_search"},
            {"type": "mcp", "server_label": "a"},
            {"type": "code_interpreter"},
        ],
    )
    assert error.code == "unsupported_tool_type" and error.param == "tools[1].type"
    for named in ("tools[1] ('web_search')", "tools[2] ('mcp')", "tools[3] ('code_interpreter')"):
        assert named in error.message
    assert "function tools" in error.message
    for kind in ("file_search", "computer_use_preview", "local_shell", "custom", "image_generation"):
        assert f"'{kind}'" in rejected(make(), input="x", tools=[{"type": kind}]).message


def test_a_chat_shaped_tool_is_told_the_responses_shape() -> None:
    nested = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    error = rejected(make(), input="x", tools=[nested])
    assert error.param == "tools[0].name" and "flat" in error.message


def test_errors_keep_openais_error_shape() -> None:
    error = ApiError(404, "no such model", code="model_not_found", param="model")
    assert make().error_body(error) == {
        "error": {"message": "no such model", "type": "invalid_request_error", "param": "model",
                  "code": "model_not_found"}
    }  # fmt: skip


# ---- answers -------------------------------------------------------------------------------


def test_a_text_answer_is_a_completed_response_with_usage_and_the_request_echoed() -> None:
    clock = Clock()
    turn = begin(make(clock), input="Hi", instructions="Be brief.", temperature=0.2, max_output_tokens=30,
                 metadata={"a": "b"}, reasoning={"effort": "low"})  # fmt: skip
    clock.t += 2
    body = turn.answer(chat_answer("Hello!", cached=4))
    r = Response.model_validate(body)
    assert r.output_text == "Hello!"
    assert body["id"] == "resp_0" and body["object"] == "response" and body["status"] == "completed"
    assert body["created_at"] == 1_700_000_000 and body["completed_at"] == 1_700_000_002
    assert body["output"] == [
        {"type": "message", "id": "msg_0", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}
    ]  # fmt: skip
    assert body["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 17,
    }
    assert (body["model"], body["instructions"], body["temperature"], body["max_output_tokens"]) == (
        MODEL, "Be brief.", 0.2, 30)  # fmt: skip
    assert body["metadata"] == {"a": "b"} and body["reasoning"] == {"effort": "low"}
    assert body["tools"] == [] and body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert body["text"] == {"format": {"type": "text"}} and body["store"] is True
    assert (
        body["error"] is None and body["incomplete_details"] is None and body["previous_response_id"] is None
    )


def test_reasoning_comes_first_as_a_reasoning_item() -> None:
    body = begin(make(), input="2+2?").answer(chat_answer("4", reasoning="Two and two make four."))
    r = Response.model_validate(body)
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert body["output"][0] == {
        "type": "reasoning", "id": "rs_0", "summary": [], "status": "completed",
        "content": [{"type": "reasoning_text", "text": "Two and two make four."}],
    }  # fmt: skip
    assert r.output_text == "4"


def test_tool_calls_become_function_call_items_without_an_empty_message() -> None:
    calls = (("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "get_weather", '{"city":"Rome"}'))
    body = begin(make(), input="x", tools=[WEATHER]).answer(
        chat_answer(None, calls=calls, finish="tool_calls")
    )
    r = Response.model_validate(body)
    assert body["output"] == [
        {"type": "function_call", "id": "fc_0", "call_id": "call_a", "name": "get_weather",
         "arguments": '{"city":"Paris"}', "status": "completed"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_b", "name": "get_weather",
         "arguments": '{"city":"Rome"}', "status": "completed"},
    ]  # fmt: skip
    assert r.output_text == "" and r.status == "completed"
    assert body["tools"] == [{**WEATHER, "strict": False}]


def test_text_before_calls_is_a_message_item_before_them() -> None:
    body = begin(make(), input="x", tools=[WEATHER]).answer(
        chat_answer("Let me look.", calls=(("c", "get_weather", "{}"),), finish="tool_calls")
    )
    assert [i["type"] for i in body["output"]] == ["message", "function_call"]
    Response.model_validate(body)


def test_an_answer_cut_at_max_tokens_is_incomplete() -> None:
    body = begin(make(), input="x", max_output_tokens=3).answer(chat_answer("One two", finish="length"))
    r = Response.model_validate(body)
    assert r.status == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and "completed_at" not in body


def test_text_format_and_tool_choice_are_echoed_in_the_responses_shape() -> None:
    fmt = {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}
    turn = begin(make(), input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
                 text={"format": fmt})  # fmt: skip
    body = turn.answer(chat_answer("{}"))
    r = Response.model_validate(body)
    assert body["text"] == {"format": fmt} and body["tool_choice"] == {
        "type": "function",
        "name": "get_weather",
    }
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"


# ---- streams -------------------------------------------------------------------------------


def test_a_streamed_text_answer_emits_the_responses_event_sequence() -> None:
    turn = begin(make(), input="Hi", stream=True)
    got = run_stream(
        turn,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo!"}),
            chunk({}, finish="stop"),
            USAGE_CHUNK,
        ],
    )
    assert [e["type"] for e in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert got[0]["response"]["status"] == "in_progress" and got[0]["response"]["output"] == []
    assert [e["delta"] for e in got if e["type"] == "response.output_text.delta"] == ["Hel", "lo!"]
    for e in got[2:9]:
        assert e["output_index"] == 0 and e.get("item_id", e.get("item", {}).get("id")) == "msg_0"
    assert got[6]["text"] == "Hello!" and got[7]["part"]["text"] == "Hello!"
    assert got[8]["item"]["status"] == "completed"
    final = Response.model_validate(got[-1]["response"])
    assert final.id == got[0]["response"]["id"] == "resp_0" and final.output_text == "Hello!"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)


def test_streamed_reasoning_then_text_then_calls_are_three_kinds_of_item_in_order() -> None:
    turn = begin(make(), input="x", tools=[WEATHER], stream=True)
    call_start = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    got = run_stream(
        turn,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Need "}),
            chunk({"reasoning_content": "weather."}),
            chunk({"content": "Checking."}),
            chunk({"tool_calls": [call_start]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                   "function": {"name": "get_weather", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
            chunk({}, finish="tool_calls"),
            USAGE_CHUNK,
        ],
    )  # fmt: skip
    assert [e["type"] for e in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # reasoning
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # first call
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",  # second call
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert got[6]["text"] == "Need weather."
    assert got[15]["item"] == {"type": "function_call", "id": "fc_0", "call_id": "call_a", "name": "get_weather",
                               "arguments": "", "status": "in_progress"}  # fmt: skip
    assert got[18]["arguments"] == '{"city":"Paris"}' and got[18]["name"] == "get_weather"
    assert [e["output_index"] for e in got if e["type"] == "response.output_item.done"] == [0, 1, 2, 3]
    final = got[-1]["response"]
    Response.model_validate(final)
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call", "function_call"]
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "Need weather."}]
    assert [i["arguments"] for i in final["output"][2:]] == ['{"city":"Paris"}', "{}"]
    assert all(i["status"] == "completed" for i in final["output"])


def test_the_sdks_stream_reader_rebuilds_the_same_response_from_our_events() -> None:
    turn = begin(make(), input="x", tools=[WEATHER], stream=True)
    call = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    got = run_stream(
        turn,
        [
            chunk({"reasoning_content": "Hmm."}),
            chunk({"content": "Sure: "}),
            chunk({"tool_calls": [call]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]}),
            chunk({}, "tool_calls"),
            USAGE_CHUNK,
        ],
    )
    state = ResponseStreamState(input_tools=[WEATHER], text_format=omit)  # type: ignore[list-item]
    seen = [out for e in got for out in state.handle_event(EVENT.validate_python(e))]
    snapshots = [e.snapshot for e in seen if e.type == "response.function_call_arguments.delta"]
    assert snapshots == ['{"city": "Oslo"}']
    final = seen[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == "Sure: "
    assert [item.type for item in final.response.output] == ["reasoning", "message", "function_call"]
    assert final.response.output[2].arguments == '{"city": "Oslo"}'  # type: ignore[union-attr]


def test_a_call_sent_whole_in_one_delta_by_an_older_host_streams_as_one_piece() -> None:
    whole = {"index": 0, "id": "call_x", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}  # fmt: skip
    got = run_stream(
        begin(make(), input="x", stream=True), [chunk({"tool_calls": [whole]}), chunk({}, "tool_calls")]
    )
    kinds = [e["type"] for e in got]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert got[3]["delta"] == '{"city":"Oslo"}' and got[-1]["response"]["output"][0]["call_id"] == "call_x"
    assert got[-1]["response"]["usage"] is None  # no usage chunk came


def test_a_stream_cut_at_max_tokens_ends_with_response_incomplete() -> None:
    got = run_stream(begin(make(), input="x", stream=True),
                     [chunk({"content": "One"}), chunk({}, finish="length"), USAGE_CHUNK])  # fmt: skip
    assert got[-1]["type"] == "response.incomplete"
    assert got[-2]["item"]["status"] == "incomplete"
    final = Response.model_validate(got[-1]["response"])
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"


def test_an_empty_stream_still_answers_with_one_empty_message() -> None:
    got = run_stream(begin(make(), input="x", stream=True), [chunk({"role": "assistant", "content": ""}),
                                                              chunk({}, "stop")])  # fmt: skip
    assert got[-1]["type"] == "response.completed"
    assert Response.model_validate(got[-1]["response"]).output_text == ""
    assert [i["type"] for i in got[-1]["response"]["output"]] == ["message"]


def test_a_failure_mid_stream_ends_with_response_failed_and_nothing_after() -> None:
    stream = begin(make(), input="x", stream=True).stream()
    raw = stream.feed(chunk({"content": "Half"}))
    raw += stream.fail(ApiError(502, "The model server stopped in the middle.", type="server_error",
                                code="backend_failed"))  # fmt: skip
    assert (
        stream.feed(chunk({"content": "more"})) == []
        and stream.end() == []
        and stream.fail(ApiError(500, "x")) == []
    )
    got = events(raw)
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert got[-1]["type"] == "response.failed"
    failed = Response.model_validate(got[-1]["response"])
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.code, failed.error.message) == (
        "server_error",
        "The model server stopped in the middle.",
    )
    assert got[-1]["response"]["output"][0]["status"] == "incomplete"


def test_a_failure_before_any_chunk_still_opens_with_response_created() -> None:
    got = events(
        begin(make(), input="x", stream=True).stream().fail(ApiError(503, "busy", code="upstream_busy"))
    )
    assert [e["type"] for e in got] == ["response.created", "response.in_progress", "response.failed"]


def test_an_error_chunk_fed_in_fails_the_stream() -> None:
    stream = begin(make(), input="x", stream=True).stream()
    got = events(
        stream.feed({"error": {"message": "generation failed", "type": "server_error", "code": "x"}})
    )
    assert (
        got[-1]["type"] == "response.failed"
        and got[-1]["response"]["error"]["message"] == "generation failed"
    )
    assert stream.end() == []


# ---- previous_response_id ------------------------------------------------------------------


def test_a_follow_up_replays_the_chain_without_the_earlier_instructions() -> None:
    tr = make()
    first = begin(tr, input="My name is Ada.", instructions="Be brief.")
    a = first.answer(chat_answer("Hello Ada."))
    second = begin(
        tr, input="What is my name?", previous_response_id=a["id"], instructions="Answer in French."
    )
    assert chat_messages(second) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    b = second.answer(chat_answer("Ada."))
    assert b["previous_response_id"] == a["id"] and b["id"] != a["id"]
    Response.model_validate(b)


def test_a_three_deep_chain_carries_function_calls_and_their_outputs() -> None:
    tr = make()
    a = begin(tr, input="Weather in Paris?", tools=[WEATHER], tool_choice="required").answer(
        chat_answer(None, calls=(("call_p", "get_weather", '{"city":"Paris"}'),), finish="tool_calls")
    )
    assert a["output"][0]["call_id"] == "call_p"
    second = begin(tr, previous_response_id=a["id"], tools=[WEATHER],
                   input=[{"type": "function_call_output", "call_id": "call_p", "output": "20 C"}])  # fmt: skip
    b = second.answer(chat_answer("It is 20 C in Paris."))
    third = begin(tr, previous_response_id=b["id"], input="And tomorrow?")
    assert chat_messages(third) == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_p",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_p", "name": "get_weather", "content": "20 C"},
        {"role": "assistant", "content": "It is 20 C in Paris."},
        {"role": "user", "content": "And tomorrow?"},
    ]


def test_a_streamed_answer_is_stored_when_it_completes() -> None:
    tr = make()
    turn = begin(tr, input="Count to two.", stream=True)
    stream = turn.stream()
    for c in (chunk({"content": "One, "}), chunk({"content": "two."}), chunk({}, "stop")):
        stream.feed(c)
    with pytest.raises(ApiErrorResponse):  # not yet: only a finished answer can be continued
        begin(tr, input="x", previous_response_id=turn.response_id)
    stream.end()
    follow = begin(tr, input="Again.", previous_response_id=turn.response_id)
    assert chat_messages(follow)[1] == {"role": "assistant", "content": "One, two."}


def test_a_failed_stream_is_not_stored() -> None:
    tr = make()
    turn = begin(tr, input="x", stream=True)
    stream = turn.stream()
    stream.feed(chunk({"content": "Hal"}))
    stream.fail(ApiError(502, "broke"))
    rejected(tr, input="y", previous_response_id=turn.response_id)


def test_an_unknown_previous_response_id_is_a_400_never_a_fresh_start() -> None:
    error = rejected(make(), input="x", previous_response_id="resp_nope")
    assert error.code == "previous_response_not_found" and error.param == "previous_response_id"
    assert "resp_nope" in error.message


def test_a_response_made_with_store_false_cannot_be_continued() -> None:
    tr = make()
    a = begin(tr, input="x", store=False).answer(chat_answer("y"))
    assert a["store"] is False
    assert rejected(tr, input="z", previous_response_id=a["id"]).code == "previous_response_not_found"


def test_the_store_drops_the_oldest_response_past_its_count() -> None:
    tr = make(max_stored=2)
    ids = [begin(tr, input=f"q{i}").answer(chat_answer(f"a{i}"))["id"] for i in range(3)]
    assert len(tr.store) == 2
    assert rejected(tr, input="x", previous_response_id=ids[0]).code == "previous_response_not_found"
    for kept in ids[1:]:
        begin(tr, input="x", previous_response_id=kept)


def test_the_store_forgets_responses_past_their_age() -> None:
    clock = Clock()
    tr = make(clock, max_age_s=60.0)
    old = begin(tr, input="q").answer(chat_answer("a"))["id"]
    clock.t += 30
    young = begin(tr, input="q").answer(chat_answer("a"))["id"]
    clock.t += 29.5
    begin(tr, input="x", previous_response_id=old)  # 59.5 s old: still there
    clock.t += 1
    assert rejected(tr, input="x", previous_response_id=old).code == "previous_response_not_found"
    begin(tr, input="x", previous_response_id=young)
    clock.t += 60
    assert len(tr.store) == 0


def test_a_stored_chain_is_not_changed_by_what_is_done_with_a_turns_chat_body() -> None:
    tr = make()
    a = begin(tr, input="q").answer(chat_answer("a"))
    follow = begin(tr, input="x", previous_response_id=a["id"])
    follow.chat["messages"][0]["content"] = "tampered"
    assert chat_messages(begin(tr, input="x", previous_response_id=a["id"]))[0] == {
        "role": "user",
        "content": "q",
    }


def test_a_chain_holds_each_message_once_however_long_it_grows() -> None:
    tr = make()
    a = begin(tr, input="q").answer(chat_answer("a"))
    b = begin(tr, input="x", previous_response_id=a["id"]).answer(chat_answer("b"))
    first, second = tr.store.conversation(a["id"]), tr.store.conversation(b["id"])
    assert first is not None and second is not None and len(second) == 4
    assert all(m is n for m, n in zip(first, second[:2], strict=True))
