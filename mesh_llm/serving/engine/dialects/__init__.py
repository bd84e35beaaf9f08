"""The tool-call and reasoning dialects models write, in one table, and a streaming parser for each.

A model family writes calls and reasoning in its own markup. `detect_dialect` picks the family
from the chat template's source (which names the family's markers), never from a file name;
`DIALECTS` holds one entry per family:

    family        calls                                                          reasoning
    hermes        <tool_call>{"name": n, "arguments": {...}}</tool_call>          -
    qwen3         as hermes                                                      <think>…</think>
    qwen3-coder   <tool_call><function=n><parameter=k>v</parameter></function>…  <think>…</think>
    glm           <tool_call>n<arg_key>k</arg_key><arg_value>v</arg_value>…      <think>…</think>
    harmony       <|channel|>commentary to=functions.n <|constrain|>json<|message|>{...}
                  (analysis channel: reasoning; final channel: content)
    deepseek-r1   <|tool▁calls▁begin|><|tool▁call▁begin|>function<|tool▁sep|>n\n```json\n{...}\n```…
    deepseek-v3.1 <|tool▁calls▁begin|><|tool▁call▁begin|>n<|tool▁sep|>{...}<|tool▁call▁end|>…
                  (DeepSeek's bars are U+FF5C, the fullwidth vertical line)
    kimi-k2       <|tool_calls_section_begin|><|tool_call_begin|>functions.n:0<|tool_call_argument_begin|>{...}…
    llama3        {"name": n, "parameters": {...}}  (the whole answer, or after <|python_tag|>)
    mistral       [TOOL_CALLS][{"name": n, "arguments": {...}, "id": ...}]  or  [TOOL_CALLS]n[ARGS]{...}
    (unknown)     today's fallback: hermes blocks, mistral, or an answer that is wholly plain JSON

`OutputParser` reads a chat answer as it is generated: fed text pieces, it returns events
(`Content`, `Reasoning`, `CallStart`, `CallArgs`, `CallEnd`). Only text that can begin one of the
dialect's own markers is held back, and arguments stream as they are generated (JSON arguments
after a call's name, piece by piece up to their closing brace; a call written arguments first is
sent whole once complete); a whole answer is parsed by feeding it at once, so a whole answer and
the concatenation of a stream agree whatever the chunking. Per family there is only a
call-region parser (what follows the family's opening marker) and its entry in the table: how calls
are written (`write`, for prompts of templates that cannot list tools) and the grammar that
forces a call in the family's own syntax (`forced_call_grammar`).

Where each part lives: `_table` (the entries, in detection order), `_events`, `_base` (the entry's
record and what every parser shares), `_scan` (marker and JSON scanning), `_parser` (the answer
parser), `_forced` and `_gbnf` (forced calls); one module per family group: `_hermes`, `_xml`
(Qwen3-Coder, GLM), `_sections` (DeepSeek, Kimi K2), `_json` (Llama 3.x, Mistral, fallback),
`_harmony`.
"""

from mesh_llm.serving.engine.dialects._base import CallSpec, Dialect, Schemas
from mesh_llm.serving.engine.dialects._events import (
    CallArgs,
    CallEnd,
    CallStart,
    Content,
    Event,
    Parsed,
    ParsedCall,
    Reasoning,
    collect_events,
)
from mesh_llm.serving.engine.dialects._forced import forced_call_grammar
from mesh_llm.serving.engine.dialects._harmony import HarmonyParser
from mesh_llm.serving.engine.dialects._parser import OutputParser, Parser, make_parser, parse_answer
from mesh_llm.serving.engine.dialects._table import (
    DEEPSEEK_R1,
    DEEPSEEK_V31,
    DIALECTS,
    FALLBACK,
    GLM,
    HARMONY,
    HERMES,
    KIMI_K2,
    LLAMA3,
    MISTRAL,
    MISTRAL_ARGS,
    QWEN3,
    QWEN3_CODER,
    detect_dialect,
    starts_in_reasoning,
    tool_schemas,
)

__all__ = [
    "DEEPSEEK_R1",
    "DEEPSEEK_V31",
    "DIALECTS",
    "FALLBACK",
    "GLM",
    "HARMONY",
    "HERMES",
    "KIMI_K2",
    "LLAMA3",
    "MISTRAL",
    "MISTRAL_ARGS",
    "QWEN3",
    "QWEN3_CODER",
    "CallArgs",
    "CallEnd",
    "CallSpec",
    "CallStart",
    "Content",
    "Dialect",
    "Event",
    "HarmonyParser",
    "OutputParser",
    "Parsed",
    "ParsedCall",
    "Parser",
    "Reasoning",
    "Schemas",
    "collect_events",
    "detect_dialect",
    "forced_call_grammar",
    "make_parser",
    "parse_answer",
    "starts_in_reasoning",
    "tool_schemas",
]
