"""The engine's pure parts: text streaming with stop strings, request options, KV sizing,
grammar fixes, and routing by free slots."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.api.routing import Endpoint, choose
from mesh_llm.models.kv import kv_bytes_per_token, kv_cache_bytes
from mesh_llm.serving.engine._openai import BAN, RequestError, parse_options, prompt_text
from mesh_llm.serving.engine._text import TextStream, common_prefix


def _feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    out = "".join(stream.feed(p) for p in pieces)
    return out + stream.flush()


def test_a_stop_string_spanning_tokens_ends_the_text_before_it() -> None:
    s = TextStream(["United States"])
    out = _feed_all(s, [b" Paris.", b"\n\nThe", b" Uni", b"ted", b" States", b" has"])
    assert out == " Paris.\n\nThe " and s.stopped == "United States"


def test_text_that_only_looks_like_a_stop_start_is_released_in_the_end() -> None:
    s = TextStream(["STOP"])
    assert s.feed(b"abc ST") == "abc "  # "ST" could begin "STOP": held back
    assert s.feed(b"OOL") == "STOOL"
    assert s.flush() == "" and s.stopped is None


def test_utf8_split_across_tokens_is_joined() -> None:
    data = "héllo ✓".encode()
    s = TextStream()
    out = _feed_all(s, [data[i : i + 1] for i in range(len(data))])
    assert out == "héllo ✓"


@given(st.text(max_size=40), st.lists(st.text(min_size=1, max_size=4), max_size=3), st.integers(1, 5))
def test_streamed_text_is_cut_before_the_first_stop_to_complete(
    text: str, stops: list[str], size: int
) -> None:
    data = text.encode()
    s = TextStream(stops)
    out = _feed_all(s, [data[i : i + size] for i in range(0, len(data), size)])
    # Whatever the chunking: a prefix of the text with no stop string in it, and all of the
    # text when no stop string occurs.
    assert text.startswith(out) and not any(x in out for x in stops)
    if not any(x in text for x in stops):
        assert out == text
    if size == 1 and text.isascii():
        # One character at a time, generation stops as soon as some stop string is complete:
        # the one that ends first wins (among those, the one that starts first).
        found = [(text.find(x) + len(x), text.find(x)) for x in stops if text.find(x) >= 0]
        assert out == (text[: min(found)[1]] if found else text)


def test_common_prefix() -> None:
    assert (
        common_prefix([1, 2, 3], [1, 2, 4]) == 2
        and common_prefix([], [1]) == 0
        and common_prefix([5], [5]) == 1
    )


def test_options_take_openai_fields_and_max_completion_tokens_wins() -> None:
    o = parse_options(
        {"max_tokens": 50, "max_completion_tokens": 7, "temperature": 0, "stop": "x", "seed": 3, "n": 2,
         "stream": True, "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2,
         "logit_bias": {"5": -100, "6": 3}, "response_format": {"type": "json_object"}},
        chat=True, n_vocab=10,
    )  # fmt: skip
    assert o.max_tokens == 7 and o.temperature == 0 and o.stops == ("x",) and o.seed == 3 and o.n == 2
    assert o.include_usage and o.logprobs == 2 and o.response_format.kind == "json_object"
    assert o.logit_bias == ((5, BAN), (6, 3.0))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"n": 50}, "n"),
        ({"stop": [1]}, "stop"),
        ({"stop": ["x" * 300]}, "stop"),
        ({"logit_bias": {"99": 1}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_options_name_their_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_options(body, chat=True, n_vocab=10)
    assert info.value.param == param and info.value.status == 400


def test_text_completion_prompt_shapes() -> None:
    assert prompt_text({"prompt": "hi"}) == "hi" and prompt_text({"prompt": ["hi"]}) == "hi"
    with pytest.raises(RequestError):
        prompt_text({"prompt": ["a", "b"]})


def test_kv_cache_size_from_metadata() -> None:
    smollm2 = {
        "general.architecture": "llama",
        "llama.block_count": 30,
        "llama.embedding_length": 576,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
    }
    # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes = 23,040 bytes a token (llama.cpp: 90 MiB at 4096)
    assert kv_bytes_per_token(smollm2) == 23040
    assert kv_cache_bytes(smollm2, 4096, 4) == 4 * 90 * 2**20
    per_layer = {**smollm2, "llama.attention.head_count_kv": [3] * 15 + [0] * 15}
    assert kv_bytes_per_token(per_layer) == 23040 // 2
    assert kv_bytes_per_token({"general.architecture": "llama"}) == 0


def test_json_grammar_keeps_control_characters_out_of_strings_and_enforces_small_ranges() -> None:
    from mesh_llm.serving.engine._grammar import _LOOSE_CHAR, _ranges_as_enums, json_grammar

    grammar = json_grammar({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    # If llama-cpp-python changes its char rule, this says so instead of silently not fixing it.
    assert _LOOSE_CHAR not in grammar and "\\x00-\\x1F" in grammar
    assert _ranges_as_enums({"type": "integer", "minimum": 1, "maximum": 3}) == {"enum": [1, 2, 3]}
    wide = {"type": "integer", "minimum": 0, "maximum": 10**9}
    assert _ranges_as_enums(wide) == wide
    json.dumps(_ranges_as_enums({"properties": {"x": {"type": "integer", "minimum": 0, "maximum": 2}}}))


def test_routing_prefers_a_host_with_a_free_slot() -> None:
    busy = Endpoint("m", "a" * 64, True, in_flight=0, free_slots=0)
    free = Endpoint("m", "b" * 64, True, in_flight=3, free_slots=1)
    unknown = Endpoint("m", "c" * 64, True, in_flight=5, free_slots=None)
    assert choose("m", [busy, free, unknown]) == [free, unknown, busy]


class _Body:
    """Just what `RequestReader.body` reads of a request."""

    def __init__(self, body: dict[str, object]) -> None:
        self._raw = json.dumps(body).encode()
        self.headers = {"content-length": str(len(self._raw))}

    async def stream(self):  # type: ignore[no-untyped-def]
        yield self._raw


def _schema(properties: int) -> dict[str, object]:
    return {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(properties)}}


_HI = {"role": "user", "content": "hi"}
_TOOL = {"type": "function", "function": {"name": "f", "parameters": _schema(2)}}


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [_HI] * 20_000}, "messages"),
    ({"messages": [_HI], "tools": [_TOOL] * 200}, "tools"),
    ({"messages": [_HI], "tools": [{**_TOOL, "function": {"name": "f", "parameters": _schema(2000)}}]}, "tools"),
    ({"messages": [_HI], "tools": [_TOOL] + [{"function": {"parameters": _schema(200)}}] * 40}, "tools"),
    ({"messages": [_HI], "response_format": {"type": "json_schema", "json_schema": {"schema": _schema(2000)}}},
     "response_format"),
])  # fmt: skip
async def test_bodies_that_would_cost_seconds_to_convert_are_refused_as_they_are_read(
    body: dict[str, object], param: str
) -> None:
    # The attacker's bodies: each is under 1 MB, and each would cost seconds of template
    # rendering or grammar building before its 400. They are refused by count and size, on
    # reading, before any conversion (no model or template is needed to refuse them).
    from mesh_llm.serving.engine._requests import RequestReader

    class _Model:
        def show_markers(self, markers: object) -> None:
            pass

    reader = RequestReader(None, _Model(), None, alias="m", max_body=1 << 20)  # type: ignore[arg-type]
    request = _Body(body)
    assert len(request._raw) < reader.max_body
    with pytest.raises(RequestError) as refused:
        await reader.body(request)  # type: ignore[arg-type]
    assert refused.value.status == 400 and refused.value.param == param


async def test_ordinary_bodies_pass_the_cost_checks() -> None:
    from mesh_llm.serving.engine._openai import check_request_cost

    check_request_cost({"messages": [_HI] * 500, "tools": [_TOOL] * 40})
    check_request_cost({"messages": "odd", "tools": {"not": "a list"}, "response_format": 3})


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1:8001", 200), ("localhost", 200), ("[::1]:8001", 200), ("LOCALHOST:1", 200),
    ("rebind.attacker.example", 421), ("rebind.attacker.example:8001", 421), ("10.0.0.5", 421), ("", 421),
])  # fmt: skip
async def test_the_model_server_answers_only_requests_naming_this_machine(host: str, status: int) -> None:
    import httpx

    from mesh_llm.serving.model_server_main import this_machine_only

    async def app(scope: object, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    transport = httpx.ASGITransport(app=this_machine_only(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        assert (await c.get("/mesh/health", headers={"host": host})).status_code == status


def test_a_slot_reports_prefill_progress_until_its_first_token() -> None:
    from mesh_llm.serving.engine._jobs import EngineStats, Job, Slot, SlotStats
    from mesh_llm.serving.engine._llama import SamplerSpec

    job = Job(prompt=list(range(7600)), max_tokens=8, sampling=SamplerSpec(temperature=0), emit=print)
    slot = Slot(seq=1, cached=list(range(3072)), job=job)
    job.n_done = 3072
    assert SlotStats.of(slot) == SlotStats(1, True, 3072, (3072, 7600))
    job.n_done = 7600  # the last chunk is being decoded: still no token
    assert SlotStats.of(slot).prefill == (7600, 7600)
    job.next_token, job.generated = 42, 1
    assert SlotStats.of(slot).prefill is None
    idle = Slot(seq=0, cached=[1, 2, 3])
    report = EngineStats((SlotStats.of(idle), SlotStats(1, True, 3072, (3072, 7600))), 0, 0.0, 0, 0, 0)
    assert report.as_dict()["slots"] == [
        {"id": 0, "busy": False, "cached_tokens": 3, "prefill": None},
        {"id": 1, "busy": True, "cached_tokens": 3072, "prefill": {"done": 3072, "total": 7600}},
    ]
