"""Tool-call and reasoning dialects: detection from real chat templates, calls the templates write
read back, each family's documented output parsed, and streams in any chunking equal to the whole."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.serving.engine._chat import ChatTemplate, normalize_messages
from mesh_llm.serving.engine._tools import validate_tools
from mesh_llm.serving.engine.dialects import (
    DEEPSEEK_R1,
    DEEPSEEK_V31,
    FALLBACK,
    GLM,
    HARMONY,
    HERMES,
    KIMI_K2,
    LLAMA3,
    MISTRAL,
    QWEN3,
    QWEN3_CODER,
    CallArgs,
    CallEnd,
    CallStart,
    Dialect,
    Parsed,
    collect_events,
    detect_dialect,
    forced_call_grammar,
    make_parser,
    parse_answer,
    starts_in_reasoning,
    tool_schemas,
)

TEMPLATES = Path(__file__).parent.parent / "templates"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
TOOLS = validate_tools(
    [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER},
        }
    ]
)
SCHEMAS = tool_schemas(TOOLS)

FAMILIES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": HERMES,
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": HERMES,
    "Qwen-Qwen3-0.6B.jinja": QWEN3,
    "Qwen3-Coder.jinja": QWEN3_CODER,
    "GLM-4.6.jinja": GLM,
    "GLM-4.7-Flash.jinja": GLM,
    "openai-gpt-oss-120b.jinja": HARMONY,
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": DEEPSEEK_R1,
    "deepseek-ai-DeepSeek-V3.1.jinja": DEEPSEEK_V31,
    "moonshotai-Kimi-K2.jinja": KIMI_K2,
    "Kimi-K2-Thinking.jinja": KIMI_K2,
    "meta-llama-Llama-3.1-8B-Instruct.jinja": LLAMA3,
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": MISTRAL,
}


def template(name: str) -> ChatTemplate:
    return ChatTemplate(
        (TEMPLATES / name).read_text(), bos_token="<s>", eos_token="</s>", now=lambda: datetime(2025, 1, 2)
    )


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_is_detected_from_its_real_template(name: str) -> None:
    assert detect_dialect((TEMPLATES / name).read_text()) is FAMILIES[name]


def test_an_unknown_template_keeps_the_json_fallback() -> None:
    assert detect_dialect("{% for m in messages %}{{ m.content }}{% endfor %}") is FALLBACK
    assert detect_dialect(None) is FALLBACK


# ── what each template writes, read back ──────────────────────────────────────────────────────

CALL_ID = "abcDEF123"  # nine letters and digits: Mistral's templates insist on that shape


def conversation() -> list[dict[str, Any]]:
    return normalize_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": CALL_ID, "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Rome", "days": 2}'},
        }]},
        {"role": "tool", "tool_call_id": CALL_ID, "content": "18 C"},
    ])  # fmt: skip


def written_call(dialect: Dialect, prompt: str) -> str:
    """The assistant turn holding the call, cut out of a rendered prompt by the family's markers."""
    starts = {
        "harmony": "<|start|>assistant to=",
        "kimi-k2": "<|tool_calls_section_begin|>",
        "deepseek-r1": DEEPSEEK_R1.openers[0],
        "deepseek-v3.1": DEEPSEEK_V31.openers[0],
        "mistral": "[TOOL_CALLS]",
        "llama3": '{"name"',
    }
    # Searched after the user's turn: system prompts show the call format too.
    start = prompt.index(starts.get(dialect.name, "<tool_call>"), prompt.index("Weather in Rome?"))
    ends = {"harmony": "<|call|>", "kimi-k2": "<|tool_calls_section_end|>", "mistral": "}]", "llama3": "}}"}
    end_marker = ends.get(dialect.name, "</tool_call>")
    if dialect.name.startswith("deepseek"):
        end_marker = DEEPSEEK_R1.openers[0].replace("begin", "end")
    end = prompt.index(end_marker, start) + len(end_marker)
    text = prompt[start:end]
    if dialect is HARMONY:  # the template writes the recipient before the channel
        text = text.removeprefix("<|start|>assistant")
    return text


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_call_each_real_template_writes_is_read_back(name: str) -> None:
    chat = template(name)
    prompt = chat.render(conversation(), tools=TOOLS)
    assert "18 C" in prompt
    dialect = FAMILIES[name]
    parsed = parse_answer(dialect, written_call(dialect, prompt), SCHEMAS)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", {"city": "Rome", "days": 2})
    ]
    assert parsed.content == ""


def test_llama3_keeps_plain_json_and_its_template_reads_the_forced_call_back() -> None:
    # Llama 3.x's own call is plain JSON with a `parameters` key: the forced grammar writes that.
    grammar = forced_call_grammar(LLAMA3, TOOLS, None, in_reasoning=False)
    assert grammar is not None and '\\"parameters\\": ' in grammar
    prompt = template("meta-llama-Llama-3.1-8B-Instruct.jinja").render(conversation(), tools=TOOLS)
    assert '{"name": "get_weather", "parameters": {"city": "Rome", "days": 2}}' in prompt


def test_templates_that_open_reasoning_in_the_prompt_are_noticed() -> None:
    r1 = template("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja").render(
        normalize_messages([{"role": "user", "content": "hi"}])
    )
    glm47 = template("GLM-4.7-Flash.jinja").render(normalize_messages([{"role": "user", "content": "hi"}]))
    qwen3 = template("Qwen-Qwen3-0.6B.jinja").render(normalize_messages([{"role": "user", "content": "hi"}]))
    assert starts_in_reasoning(DEEPSEEK_R1, r1)
    assert starts_in_reasoning(GLM, glm47)
    assert not starts_in_reasoning(QWEN3, qwen3)
    parsed = parse_answer(DEEPSEEK_R1, "Let me think.\n</think>\n\nHello!", {}, in_reasoning=True)
    assert parsed == Parsed("Hello!", "Let me think.", ())


# ── documented outputs ────────────────────────────────────────────────────────────────────────

DS = DEEPSEEK_R1.openers[0]  # the calls section opener, fenced by fullwidth bars
DS_CALL, DS_SEP, DS_END, DS_CALLS_END = (
    DS.replace("calls", "call"), DS.replace("calls▁begin", "sep"), DS.replace("calls▁begin", "call▁end"),
    DS.replace("begin", "end"),
)  # fmt: skip

DOCUMENTED: list[tuple[Dialect, str, str, str]] = [  # dialect, output, content, reasoning
    (HERMES, 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>', "Sure.", ""),
    (QWEN3, '<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>', "", "The user wants weather."),
    (QWEN3_CODER, "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>", "", ""),
    (GLM, "<think>Weather lookup.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call>", "", "Weather lookup."),
    (HARMONY, '<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Rome"}', "", "Need weather."),
    (DEEPSEEK_R1, f'<think>\nweather\n</think>\n\n{DS}{DS_CALL}function{DS_SEP}get_weather\n```json\n{{"city": "Rome"}}\n```{DS_END}{DS_CALLS_END}', "", "weather"),
    (DEEPSEEK_V31, f'{DS}{DS_CALL}get_weather{DS_SEP}{{"city": "Rome"}}{DS_END}{DS_CALLS_END}', "", ""),
    (KIMI_K2, '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Rome"}<|tool_call_end|><|tool_calls_section_end|>', "", ""),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Rome"}}', "", ""),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "abcDEF123"}]', "", ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("dialect", "text", "content", "reasoning"), DOCUMENTED, ids=[d[0].name for d in DOCUMENTED]
)
def test_documented_outputs_parse(dialect: Dialect, text: str, content: str, reasoning: str) -> None:
    parsed = parse_answer(dialect, text, SCHEMAS)
    assert (parsed.content, parsed.reasoning) == (content, reasoning)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("get_weather", {"city": "Rome"})]


def test_harmony_final_channel_is_content_and_analysis_is_reasoning() -> None:
    text = "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>Hi there"
    assert parse_answer(HARMONY, text, {}) == Parsed("Hi there", "Simple.", ())


def test_kimi_keeps_the_models_own_call_id() -> None:
    parsed = parse_answer(KIMI_K2, DOCUMENTED[7][1], SCHEMAS)
    assert parsed.calls[0].id == "functions.get_weather:0"


def test_xml_arguments_follow_the_parameter_types() -> None:
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    (call,) = parse_answer(QWEN3_CODER, text, SCHEMAS).calls
    assert json.loads(call.arguments) == {"city": "42", "days": 3}


def test_markers_of_unknown_tools_and_with_no_tools_stay_text() -> None:
    text = '<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>'
    assert parse_answer(HERMES, text, SCHEMAS) == Parsed(text, "", ())
    assert parse_answer(HERMES, text, {}) == Parsed(text, "", ())


def test_only_text_that_may_begin_a_marker_is_held_back() -> None:
    parser = make_parser(QWEN3, SCHEMAS)
    assert (
        collect_events(parser.feed("{ not a call, streamed at once }")).content
        == "{ not a call, streamed at once }"
    )
    assert collect_events(parser.feed(" see <tool")).content == " see"
    # The plain-JSON fallback must hold a leading brace: its calls have no marker of their own.
    assert make_parser(FALLBACK, SCHEMAS).feed('{"name": "get_') == []


def test_streamed_arguments_arrive_as_they_are_generated() -> None:
    parser = make_parser(KIMI_K2, SCHEMAS)
    events = parser.feed(
        '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Ro'
    )
    assert isinstance(events[0], CallStart) and events[1] == CallArgs(0, '{"city": "Ro')


def test_json_arguments_stream_piece_by_piece_up_to_their_closing_brace() -> None:
    parser = make_parser(HERMES, SCHEMAS)
    assert collect_events(parser.feed('Sure.\n<tool_call>\n{"name": "get_wea')).content == "Sure."
    events = parser.feed('ther", "arguments": {"city": "Ro')
    assert events == [CallStart(0, events[0].id, "get_weather"), CallArgs(0, '{"city": "Ro')]  # type: ignore[union-attr]
    assert parser.feed('me}", "days": 2') == [CallArgs(0, 'me}", "days": 2')]
    assert parser.feed("}}\n</tool") == [CallArgs(0, "}")]
    assert parser.feed("_call>") == [CallEnd(0)]


@pytest.mark.parametrize(
    ("dialect", "head", "tail"),
    [
        (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": ', ', "id": "abcDEF123"}]'),
        (MISTRAL, "[TOOL_CALLS]get_weather[ARGS]", ""),
        (LLAMA3, '{"name": "get_weather", "parameters": ', "}"),
        (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": ', "}"),
    ],
)
def test_mistral_and_llama_arguments_stream_too(dialect: Dialect, head: str, tail: str) -> None:
    parser = make_parser(dialect, SCHEMAS)
    events = parser.feed(head + '{"city": "Ro')
    assert [type(ev) for ev in events] == [CallStart, CallArgs] and events[1] == CallArgs(0, '{"city": "Ro')
    assert parser.feed('me"}') == [CallArgs(0, 'me"}')]
    assert collect_events([*events, CallArgs(0, 'me"}'), *parser.feed(tail), *parser.finish()]).calls[
        0
    ].arguments == ('{"city": "Rome"}')


def test_json_calls_written_arguments_first_arrive_in_one_piece() -> None:
    parser = make_parser(QWEN3, SCHEMAS)
    assert parser.feed('<tool_call>{"arguments": {"city": "Rome"}') == []
    events = parser.feed(', "name": "get_weather"}</tool_call>')
    assert [type(ev) for ev in events] == [CallStart, CallArgs, CallEnd]
    assert json.loads(events[1].text) == {"city": "Rome"}  # type: ignore[union-attr]


# ── streaming equals the whole, in any chunking ───────────────────────────────────────────────

EXTRA: list[tuple[Dialect, str]] = [
    (FALLBACK, '```json\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n```'),
    (FALLBACK, "Plain answer with a < and a { in it.\n"),
    (HERMES, 'A <tool_call>{"name": "nope", "arguments": {}}</tool_call> then <tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'),
    (QWEN3_CODER, "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>"),
    (GLM, "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value><arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"),
    (HARMONY, "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b"),
    (KIMI_K2, '<think>hm</think>ok<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "A"}<|tool_call_end|><|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{"city": "B"}<|tool_call_end|><|tool_calls_section_end|>'),
    (DEEPSEEK_V31, f'{DS}{DS_CALL}get_weather{DS_SEP}{{"city": "A"}}{DS_END}{DS_CALL}get_weather{DS_SEP}{{"city": "B"}}{DS_END}{DS_CALLS_END}'),
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": {"city": "a\\"}<[{x", "days": [1, {"n": 2}]}}</tool_call>'),
    (HERMES, '<tool_call>{"arguments": {"city": "A"}, "name": "get_weather"}</tool_call>\n<tool_call>{"name": "get_weather", "arguments": "{}"}</tool_call>'),
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": {"city": "A"}, "id": "x}"}</tool_call> and <tool_call>{"name": "get_weather", "arguments": {"city": "B"}}'),
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": {"city": "A"</tool_call>after'),
    (QWEN3_CODER, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'),
    (MISTRAL, 'Checking.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "A"}, "id": "abcDEF123"}, {"arguments": {"city": "B"}, "name": "get_weather"}] ok'),
    (MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "[TOOL_CALLS]"}[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"days": 2} done'),
    (MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "A"}[TOOL_CALLS]launch[ARGS]{}'),
    (MISTRAL, "[TOOL_CALLS] nothing useful"),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_weather", "parameters": {"city": "B"}}'),
    (LLAMA3, '{"parameters": {"city": "A"}, "name": "get_weather"}'),
    (LLAMA3, '{"name": "Ada", "parameters": {}} is JSON, not a call'),
]  # fmt: skip
SAMPLES = [(d, t) for d, t, _, _ in DOCUMENTED] + EXTRA


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def _ids() -> Any:
    n = iter(range(100))
    return lambda: f"call_{next(n)}"


@settings(max_examples=60, deadline=None)
@given(
    sample=st.sampled_from(SAMPLES), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)
)
def test_any_chunking_of_a_stream_adds_up_to_the_whole_answer(
    sample: tuple[Dialect, str], cuts: list[int]
) -> None:
    dialect, text = sample
    whole = parse_answer(dialect, text, SCHEMAS, new_id=_ids())
    parser = make_parser(dialect, SCHEMAS, new_id=_ids())
    events = [ev for piece in _chunks(text, cuts) for ev in parser.feed(piece)] + parser.finish()
    assert collect_events(events) == whole
    starts = [ev.index for ev in events if isinstance(ev, CallStart)]
    assert starts == list(range(len(whole.calls)))


# ── forced calls in the family's own syntax ──────────────────────────────────────────────────


@pytest.mark.parametrize(
    "dialect",
    [HERMES, QWEN3, QWEN3_CODER, GLM, HARMONY, DEEPSEEK_R1, DEEPSEEK_V31, KIMI_K2, LLAMA3, MISTRAL],
    ids=lambda d: d.name,
)
def test_forced_call_grammars_compile_and_name_the_familys_markers(dialect: Dialect) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    grammar = forced_call_grammar(dialect, TOOLS, "get_weather", in_reasoning=dialect.reasoning is not None)
    assert grammar is not None
    LlamaGrammar.from_string(grammar, verbose=False)
    first_marker = {"harmony": "<|channel|>", "llama3": "{"}.get(dialect.name) or dialect.openers[0]
    assert first_marker.replace('"', '\\"') in grammar


def test_unknown_templates_keep_the_plain_json_forced_call() -> None:
    assert forced_call_grammar(FALLBACK, TOOLS, None, in_reasoning=False) is None
