"""The engine's pure parts: text streaming with stop strings, request options, KV sizing,
grammar fixes, and routing by free slots."""

from __future__ import annotations

import json

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
