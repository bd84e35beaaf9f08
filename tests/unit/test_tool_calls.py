"""Tool definitions, tool_choice, forced-call schemas, and reading tool calls out of model text."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.serving.engine._tools import (
    DEFAULT_PARAMETERS,
    ToolChoice,
    ToolError,
    forced_call_schema,
    new_call_id,
    resolve_tool_choice,
    validate_tools,
)
from mesh_llm.serving.engine.dialects import FALLBACK, Parsed, ParsedCall, parse_answer

NAMES = {"get_weather", "get_time"}


def tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = validate_tools([tool("get_weather", CITY), tool("get_time")])


def ids() -> Any:
    counter = iter(range(1, 1000))
    return lambda: f"call_{next(counter)}"


def read(text: str, names: Collection[str] = NAMES, new_id: Callable[[], str] | None = None) -> Parsed:
    """An answer read by the dialect of templates we do not know (the JSON fallback)."""
    return parse_answer(FALLBACK, text, dict.fromkeys(names, DEFAULT_PARAMETERS), new_id=new_id or ids())


def parse(text: str) -> tuple[str, list[tuple[str, Any]]]:
    """The content and the (name, parsed arguments) of each call."""
    parsed = read(text)
    return parsed.content, [(c.name, json.loads(c.arguments)) for c in parsed.calls]


# ── ids ───────────────────────────────────────────────────────────────────────────────────────


def test_call_ids_are_call_and_24_hex_digits() -> None:
    call_id = new_call_id()
    assert call_id.startswith("call_") and len(call_id) == 29
    int(call_id[5:], 16)


# ── validate_tools ────────────────────────────────────────────────────────────────────────────


def test_validate_tools_defaults_parameters_and_drops_unknown_keys() -> None:
    out = validate_tools(
        [{"type": "function", "function": {"name": "a.b-c_1", "description": "d", "x": 1}, "cache": True}]
    )
    assert out == [
        {
            "type": "function",
            "function": {"name": "a.b-c_1", "description": "d", "parameters": DEFAULT_PARAMETERS},
        }
    ]


def test_validate_tools_without_tools() -> None:
    assert validate_tools(None) == [] and validate_tools([]) == []


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"type": "function"}, "tools"),
        (["f"], "tools[0]"),
        ([{"type": "retrieval", "function": {"name": "f"}}], "tools[0].type"),
        ([{"type": "function"}], "tools[0].function"),
        ([tool("ok"), tool("has space")], "tools[1].function.name"),
        ([tool("ok"), tool("x" * 65)], "tools[1].function.name"),
        ([tool("ok"), {"type": "function", "function": {"name": 5}}], "tools[1].function.name"),
        ([tool("ok"), tool("ok")], "tools[1].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "description": 1}}],
            "tools[0].function.description",
        ),
        ([tool("f", "schema")], "tools[0].function.parameters"),  # type: ignore[arg-type]
        ([tool("f", {"type": "string"})], "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], "tools[0].function.strict"),
    ],
)
def test_validate_tools_errors_name_the_field(tools: object, param: str) -> None:
    with pytest.raises(ToolError) as e:
        validate_tools(tools)
    assert e.value.param == param


# ── resolve_tool_choice ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("choice", "tools", "expected"),
    [
        (None, TOOLS, ToolChoice("auto")),
        (None, [], ToolChoice("none")),
        ("auto", TOOLS, ToolChoice("auto")),
        ("auto", [], ToolChoice("none")),
        ("none", TOOLS, ToolChoice("none")),
        ("none", [], ToolChoice("none")),
        ("required", TOOLS, ToolChoice("required")),
        ({"type": "function", "function": {"name": "get_time"}}, TOOLS, ToolChoice("named", "get_time")),
    ],
)
def test_tool_choice_resolution(choice: object, tools: list[dict[str, Any]], expected: ToolChoice) -> None:
    assert resolve_tool_choice(choice, tools) == expected


def test_forced_modes() -> None:
    assert ToolChoice("required").forced and ToolChoice("named", "f").forced
    assert not ToolChoice("auto").forced and not ToolChoice("none").forced


@pytest.mark.parametrize(
    ("choice", "tools", "param"),
    [
        ("required", [], "tool_choice"),
        ({"type": "function", "function": {"name": "get_time"}}, [], "tool_choice.function.name"),
        ({"type": "function", "function": {"name": "launch"}}, TOOLS, "tool_choice.function.name"),
        ({"type": "function"}, TOOLS, "tool_choice"),
        ({"function": {"name": "get_time"}}, TOOLS, "tool_choice"),
        ("always", TOOLS, "tool_choice"),
        (1, TOOLS, "tool_choice"),
    ],
)
def test_bad_tool_choice(choice: object, tools: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(ToolError) as e:
        resolve_tool_choice(choice, tools)
    assert e.value.param == param


# ── forced_call_schema ────────────────────────────────────────────────────────────────────────


def test_forced_schema_for_a_named_tool() -> None:
    schema = forced_call_schema(TOOLS, "get_weather")
    assert schema == {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "arguments": CITY},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    assert list(schema["properties"]) == ["name", "arguments"]


def test_forced_schema_for_any_tool_is_any_of_each() -> None:
    schema = forced_call_schema(TOOLS, None)
    assert schema == {
        "anyOf": [forced_call_schema(TOOLS, "get_weather"), forced_call_schema(TOOLS, "get_time")]
    }
    assert schema["anyOf"][1]["properties"]["arguments"] == DEFAULT_PARAMETERS


def test_forced_schema_with_one_tool_needs_no_any_of() -> None:
    assert forced_call_schema(TOOLS[:1], None) == forced_call_schema(TOOLS, "get_weather")


def test_forced_schema_errors() -> None:
    with pytest.raises(ToolError):
        forced_call_schema(TOOLS, "launch")
    with pytest.raises(ToolError):
        forced_call_schema([], None)


def test_forced_schema_converts_to_a_grammar() -> None:
    gbnf = pytest.importorskip("llama_cpp.llama_grammar").json_schema_to_gbnf
    grammar = gbnf(json.dumps(forced_call_schema(TOOLS, None)))
    assert '\\"get_weather\\"' in grammar and '\\"get_time\\"' in grammar


# ── the fallback's reading: the formats ─────────────────────────────────────────────────────────────


def test_hermes_block() -> None:
    assert parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>') == (
        "",
        [("get_weather", {"city": "Paris"})],
    )


def test_hermes_blocks_after_content() -> None:
    text = (
        "Let me check both.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    assert parse(text) == ("Let me check both.", [("get_weather", {"city": "Paris"}), ("get_time", {})])


def test_hermes_without_the_final_close_tag() -> None:
    assert parse('<tool_call>\n{"name": "get_time", "arguments": {}}\n') == ("", [("get_time", {})])


def test_hermes_argument_may_hold_the_close_tag() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "</tool_call>"}}</tool_call>'
    assert parse(text) == ("", [("get_weather", {"city": "</tool_call>"})])


def test_hermes_block_of_an_unknown_tool_stays_content() -> None:
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>\n<tool_call>{"name": "get_time"}</tool_call>'
    assert parse(text) == ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', [("get_time", {})])


def test_llama_json_with_parameters() -> None:
    assert parse('{"name": "get_weather", "parameters": {"city": "Oslo"}}') == (
        "",
        [("get_weather", {"city": "Oslo"})],
    )


def test_llama_python_tag_and_semicolon_list() -> None:
    text = (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}; '
        '{"name": "get_time", "parameters": {}}'
    )
    assert parse(text) == ("", [("get_weather", {"city": "Oslo"}), ("get_time", {})])


def test_mistral_json_array() -> None:
    text = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Lima"}}, {"name": "get_time", "arguments": {}}]'
    assert parse(text) == ("", [("get_weather", {"city": "Lima"}), ("get_time", {})])


def test_mistral_named_form() -> None:
    text = (
        'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Lima"}[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{}'
    )
    assert parse(text) == ("Checking.", [("get_weather", {"city": "Lima"}), ("get_time", {})])


def test_plain_json_object_and_array() -> None:
    assert parse(' {"name": "get_time", "arguments": {}}\n') == ("", [("get_time", {})])
    assert parse(
        '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "A"}}]'
    ) == (
        "",
        [("get_time", {}), ("get_weather", {"city": "A"})],
    )


def test_fenced_json() -> None:
    assert parse('```json\n{"name": "get_time", "arguments": {}}\n```') == ("", [("get_time", {})])


def test_openai_shaped_call_is_read_too() -> None:
    assert parse('{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}') == (
        "",
        [("get_time", {})],
    )


def test_arguments_as_json_text_are_kept_verbatim() -> None:
    parsed = read('{"name": "get_weather", "arguments": "{\\"city\\":\\"Rome\\"}"}')
    assert parsed.calls[0].arguments == '{"city":"Rome"}'


def test_arguments_object_is_dumped_keeping_non_ascii() -> None:
    parsed = read('{"name": "get_weather", "arguments": {"city": "Zürich"}}')
    assert parsed.calls[0].arguments == '{"city": "Zürich"}'


def test_missing_arguments_mean_none() -> None:
    assert parse('{"name": "get_time"}') == ("", [("get_time", {})])


def test_ids_come_from_the_factory() -> None:
    parsed = read('[{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}]')
    assert [c.id for c in parsed.calls] == ["call_1", "call_2"]


# ── the fallback's reading: what is not a call ──────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The weather in Paris is mild.",
        "{not json at all",
        '{"city": "Paris"}',
        '{"name": "Ada", "age": 36}',
        '{"name": "launch_missiles", "arguments": {}}',
        '{"name": "get_time", "arguments": [1, 2]}',
        '{"name": "get_time", "arguments": "not an object"}',
        '{"name": "get_time", "arguments": {}} and then some prose',
        '[{"name": "get_time", "arguments": {}}, {"name": "unknown", "arguments": {}}]',
        "[1, 2, 3]",
        "<tool_call>oops</tool_call>",
        '<tool_call>{"name": "launch", "arguments": {}}</tool_call>',
        "[TOOL_CALLS] nothing useful",
        '[TOOL_CALLS]launch[ARGS]{"x": 1}',
        "```python\nprint(1)\n```",
    ],
)
def test_text_without_calls_comes_back_unchanged(text: str) -> None:
    assert read(text) == Parsed(text, "", ())


def test_no_tool_names_means_no_calls() -> None:
    text = '{"name": "get_time", "arguments": {}}'
    assert read(text, ()) == Parsed(text, "", ())


# ── the round trip, for any call ──────────────────────────────────────────────────────────────

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
CALLS = st.builds(
    ParsedCall,
    id=st.from_regex(r"\Acall_[0-9a-f]{24}\Z"),
    name=st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z"),
    arguments=st.dictionaries(st.text(), JSON_VALUES, max_size=4).map(
        lambda d: json.dumps(d, ensure_ascii=False)
    ),
)


@given(
    calls=st.lists(CALLS, min_size=1, max_size=3),
    content=st.text(st.characters(blacklist_characters="<")).map(str.strip),
)
def test_calls_written_as_hermes_blocks_parse_back(calls: list[ParsedCall], content: str) -> None:
    blocks = "".join(
        f'\n<tool_call>\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n</tool_call>'
        for c in calls
    )
    given_ids = iter(c.id for c in calls)
    parsed = read(content + blocks, {c.name for c in calls}, new_id=lambda: next(given_ids))
    assert (parsed.content, list(parsed.calls)) == (content, calls)


@given(calls=st.lists(CALLS, min_size=1, max_size=3))
def test_calls_written_as_json_parse_back(calls: list[ParsedCall]) -> None:
    text = json.dumps(
        [{"name": c.name, "arguments": json.loads(c.arguments)} for c in calls], ensure_ascii=False
    )
    given_ids = iter(c.id for c in calls)
    assert read(text, {c.name for c in calls}, new_id=lambda: next(given_ids)) == Parsed("", "", tuple(calls))


def test_absurdly_deep_json_is_not_a_call() -> None:
    text = "<tool_call>" + "[" * 100_000
    assert read(text) == Parsed(text, "", ())
    assert read("[" * 100_000) == Parsed("[" * 100_000, "", ())


def test_mistral_array_arguments_may_mention_the_args_marker() -> None:
    assert parse('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "[ARGS]"}}]') == (
        "",
        [("get_weather", {"city": "[ARGS]"})],
    )
