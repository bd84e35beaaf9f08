"""Chat messages -> prompt text: normalization of OpenAI messages and rendering of GGUF templates."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from mesh_llm.serving.engine._chat import ChatError, ChatTemplate, normalize_messages
from mesh_llm.serving.engine._tool_fallback import fallback_tool_prompt
from mesh_llm.serving.engine._tools import validate_tools
from mesh_llm.serving.engine.dialects import FALLBACK, parse_answer
from tests.tool_gguf import TOOL_TEMPLATE

# SmolLM2's own template: ChatML with no idea of tools.
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Shaped like Gemma's: no system role, strict alternation, raise_exception on anything else.
STRICT = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<turn>' + message['role'] + '\n' + message['content'] | trim + '<end>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<turn>assistant\n' }}{% endif %}"
)

# Shaped like Llama 3.1's: dated header, and arguments walked as a mapping.
DATED = (
    "{{ bos_token }}Today: {{ strftime_now('%d %b %Y') }}\n"
    "{% if tools is defined %}{% for t in tools %}{{ t | tojson(indent=2) }}\n{% endfor %}{% endif %}"
    "{% for m in messages %}"
    "{% if m.tool_calls is defined %}"
    "{% for c in m.tool_calls %}{{ c.function.name }}("
    "{% for k, v in c.function.arguments | items %}{{ k }}={{ v | tojson }}{% endfor %})\n"
    "{% endfor %}"
    "{% else %}[{{ m.role }}] {{ m.content }}\n{% endif %}"
    "{% endfor %}"
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def conversation_with_tool_turns() -> list[dict[str, Any]]:
    return normalize_messages(
        [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24 C"},
            {"role": "user", "content": "Which is warmer?"},
        ]
    )  # fmt: skip


# ── normalize_messages ────────────────────────────────────────────────────────────────────────


def test_developer_role_becomes_system() -> None:
    assert normalize_messages([{"role": "developer", "content": "Be terse."}]) == [
        {"role": "system", "content": "Be terse."}
    ]


def test_text_parts_are_joined_as_sent() -> None:
    msgs = normalize_messages(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}],
            }
        ]
    )
    assert msgs == [{"role": "user", "content": "Hello, world"}]


def test_assistant_null_content_with_tool_calls_keeps_calls_and_parses_arguments() -> None:
    msgs = normalize_messages(
        [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                    {"id": "b", "type": "function", "function": {"name": "g", "arguments": "not json"}},
                ],
            },
        ]
    )
    assert msgs[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "not json"}},
        ],
    }


def test_tool_message_learns_its_function_name_from_the_call() -> None:
    msgs = conversation_with_tool_turns()
    assert msgs[2] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1", "name": "get_weather"}


def test_unknown_keys_are_dropped_and_empty_tool_calls_left_out() -> None:
    msgs = normalize_messages(
        [{"role": "assistant", "content": "ok", "tool_calls": [], "audio": None, "reasoning_content": "hmm"}]
    )
    assert msgs == [{"role": "assistant", "content": "ok"}]


def test_legacy_function_role_becomes_tool() -> None:
    msgs = normalize_messages([{"role": "function", "name": "f", "content": "42"}])
    assert msgs == [{"role": "tool", "content": "42", "name": "f"}]


def test_image_part_is_rejected_as_text_only() -> None:
    with pytest.raises(ChatError, match="text only") as e:
        normalize_messages(
            [
                {"role": "system", "content": "s"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {}},
                    ],
                },
            ]
        )
    assert e.value.param == "messages[1].content[1]"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hello", "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "robot", "content": "beep"}], "messages[0].role"),
        ([{"content": "no role"}], "messages[0].role"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": 7}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": [{"type": "sticker"}]}], "messages[0].content[0].type"),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
        ([{"role": "assistant", "tool_calls": {}}], "messages[0].tool_calls"),
        ([{"role": "assistant", "tool_calls": [{"type": "function"}]}], "messages[0].tool_calls[0].id"),
        (
            [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"arguments": "{}"}}]}],
            "messages[0].tool_calls[0].function.name",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": 3}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_shapes_name_the_offending_field(messages: object, param: str) -> None:
    with pytest.raises(ChatError) as e:
        normalize_messages(messages)
    assert e.value.param == param
    assert isinstance(e.value, ValueError)


# ── rendering ─────────────────────────────────────────────────────────────────────────────────


def test_chatml_renders_turns_and_generation_prompt() -> None:
    prompt = ChatTemplate(CHATML).render(normalize_messages([{"role": "user", "content": "Hi"}]))
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generation_prompt_can_be_left_off() -> None:
    msgs = normalize_messages([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
    assert not ChatTemplate(CHATML).render(msgs, add_generation_prompt=False).endswith("assistant\n")


def test_supports_tools_reads_the_template_source() -> None:
    assert ChatTemplate(TOOL_TEMPLATE).supports_tools
    assert not ChatTemplate(CHATML).supports_tools
    assert not ChatTemplate("{% for m in messages %}{{ m.tool_calls }}{% endfor %}").supports_tools


def test_tool_template_lists_tools_and_renders_calls_and_results() -> None:
    prompt = ChatTemplate(TOOL_TEMPLATE).render(
        conversation_with_tool_turns(), tools=validate_tools([WEATHER])
    )
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    assert "<tools>\n" + json.dumps(validate_tools([WEATHER])[0], ensure_ascii=False) + "\n</tools>" in prompt
    assert (
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n24 C\n</tool_response>"
        "<|im_end|>\n"
        "<|im_start|>user\nWhich is warmer?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ) in prompt


def test_tool_template_without_tools_is_plain_chatml() -> None:
    msgs = normalize_messages([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
    assert ChatTemplate(TOOL_TEMPLATE).render(msgs) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_call_rendered_by_the_tool_template_parses_back() -> None:
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
    }
    msgs = normalize_messages([{"role": "user", "content": "?"}, {"role": "assistant", "tool_calls": [call]}])
    prompt = ChatTemplate(TOOL_TEMPLATE).render(msgs, add_generation_prompt=False)
    answer = prompt.split("<|im_start|>assistant\n")[1].removesuffix("<|im_end|>\n")
    parsed = parse_answer(FALLBACK, answer, {"get_weather": {}}, new_id=lambda: "c")
    assert parsed.content == ""
    assert [(c.id, c.name, c.arguments) for c in parsed.calls] == [("c", "get_weather", '{"city": "Zürich"}')]


def test_tojson_keeps_non_ascii_and_takes_keyword_args() -> None:
    t = ChatTemplate(
        "{{ messages[0].content | tojson }} {{ {'b': 1, 'a': [1]} | tojson(indent=1, sort_keys=true) }}"
    )
    assert (
        t.render([{"role": "user", "content": "héllo <b>"}]) == '"héllo <b>" {\n "a": [\n  1\n ],\n "b": 1\n}'
    )


def test_strftime_now_and_mapping_arguments() -> None:
    t = ChatTemplate(DATED, bos_token="<s>", now=lambda: datetime(2025, 7, 4, 12, 0))
    msgs = normalize_messages(
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": '{"n": 2}'}}],
            },
        ]
    )
    assert t.render(msgs) == "<s>Today: 04 Jul 2025\n[user] go\nf(n=2)\n"


def test_raise_exception_becomes_chat_error_with_the_templates_message() -> None:
    with pytest.raises(ChatError, match="roles must alternate"):
        ChatTemplate(STRICT).render(normalize_messages([{"role": "assistant", "content": "first?"}]))


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages[5].content.upper() }}",  # undefined attribute access
        "{{ messages[0].content + 1 }}",  # TypeError
        "{{ 1 // 0 }}",  # ZeroDivisionError
    ],
)
def test_template_failures_become_chat_errors(source: str) -> None:
    with pytest.raises(ChatError, match="chat template failed"):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__subclasses__() }}",
        "{{ raise_exception.__globals__['json'] }}",
        "{{ strftime_now.__self__._now }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__.os.popen('id').read() }}",
    ],
)
def test_a_template_cannot_reach_python_internals(source: str) -> None:
    with pytest.raises(ChatError) as e:
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
    assert e.value.param == "messages"  # a 400 naming the conversation, like any template failure


def test_an_internal_attribute_alone_renders_as_nothing() -> None:
    assert ChatTemplate("[{{ ''.__class__ }}]").render([{"role": "user", "content": "x"}]) == "[]"


def test_a_template_may_change_lists_and_dicts_of_its_own() -> None:
    source = (
        "{% set ns = namespace(ids=[]) %}{% for m in messages %}{% set _ = ns.ids.append(m.role) %}"
        "{% endfor %}{% set d = {} %}{% set _ = d.update({'n': ns.ids | length}) %}{{ ns.ids | join(',') }} {{ d.n }}"
    )
    msgs = normalize_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert ChatTemplate(source).render(msgs) == "user,assistant 2"


def test_what_a_template_changes_in_its_input_is_its_own_copy() -> None:
    source = (
        "{% set _ = messages[0].update({'content': 'changed'}) %}{% set _ = messages.append(messages[0]) %}"
        "{% set _ = tools[0].function.parameters.update({'type': 'array'}) %}"
        "{{ messages | length }} {{ messages[0].content }}"
    )
    msgs = normalize_messages([{"role": "user", "content": "original"}])
    tools = validate_tools([WEATHER])
    before = (json.dumps(msgs), json.dumps(tools))
    chat = ChatTemplate(source)
    assert chat.render(msgs, tools=tools) == chat.render(msgs, tools=tools) == "2 changed"
    assert (json.dumps(msgs), json.dumps(tools)) == before


def test_template_that_does_not_compile_is_a_chat_error() -> None:
    with pytest.raises(ChatError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")


# ── the fallback for templates without tools ──────────────────────────────────────────────────


def test_fallback_merges_tool_instructions_into_the_system_message() -> None:
    tools = validate_tools([WEATHER])
    msgs = normalize_messages(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Paris?"}]
    )
    prompt = ChatTemplate(CHATML).render(msgs, tools=tools)
    assert prompt.startswith(f"<|im_start|>system\nBe terse.\n\n{fallback_tool_prompt(tools)}<|im_end|>\n")
    assert '{"name": "get_weather", "description": "Current weather in a city"' in prompt
    assert '{"name": <tool name>, "arguments":' in prompt


def test_fallback_prepends_a_system_message_when_there_is_none() -> None:
    tools = validate_tools([WEATHER])
    prompt = ChatTemplate(CHATML).render(
        normalize_messages([{"role": "user", "content": "Paris?"}]), tools=tools
    )
    assert prompt.startswith(
        f"<|im_start|>system\n{fallback_tool_prompt(tools)}<|im_end|>\n<|im_start|>user\n"
    )


def test_fallback_renders_past_calls_and_results_as_plain_turns() -> None:
    prompt = ChatTemplate(CHATML).render(conversation_with_tool_turns(), tools=validate_tools([WEATHER]))
    assert (
        "<|im_start|>assistant\n"
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_weather", "arguments": {"city": "Rome"}}]<|im_end|>\n'
        "<|im_start|>user\nTool result (get_weather): 18 C\n\nTool result (get_weather): 24 C\n\n"
        "Which is warmer?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ) in prompt


def test_fallback_answer_shape_is_what_the_parser_reads() -> None:
    tools = validate_tools([WEATHER])
    parsed = parse_answer(
        FALLBACK, '{"name": "get_weather", "arguments": {"city": "Oslo"}}', {"get_weather": {}}
    )
    assert parsed.content == "" and parsed.calls[0].name == "get_weather"
    assert "reply with exactly one JSON object" in fallback_tool_prompt(tools)


def test_tool_turns_render_in_a_template_without_tools_even_with_no_tools_given() -> None:
    prompt = ChatTemplate(CHATML).render(conversation_with_tool_turns())
    assert "Tool result (get_weather): 18 C" in prompt
    assert "You can call" not in prompt


def test_fallback_moves_instructions_into_the_user_turn_when_system_is_refused() -> None:
    tools = validate_tools([WEATHER])
    msgs = normalize_messages(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Paris?"}]
    )
    prompt = ChatTemplate(STRICT, bos_token="<bos>").render(msgs, tools=tools)
    assert prompt.startswith(f"<bos><turn>user\nBe terse.\n\n{fallback_tool_prompt(tools)}\n\nParis?<end>\n")


def test_strict_template_survives_a_whole_tool_conversation() -> None:
    prompt = ChatTemplate(STRICT).render(conversation_with_tool_turns(), tools=validate_tools([WEATHER]))
    assert prompt.count("<turn>user") == 2 and prompt.count("<turn>assistant") == 2


def test_absurdly_deep_arguments_stay_text() -> None:
    deep = "[" * 100_000
    msgs = normalize_messages(
        [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": deep}}]}]
    )
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == deep
