"""The one table of dialects: per family, its markers, reasoning tags, how arguments are written,
its region parser, writer and forced-call grammar; and which entry a chat template picks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from mesh_llm.serving.engine._tool_formats import MISTRAL_CALLS, PYTHON_TAG
from mesh_llm.serving.engine._tools import DEFAULT_PARAMETERS
from mesh_llm.serving.engine.dialects._base import Dialect, Region, Schemas
from mesh_llm.serving.engine.dialects._harmony import (
    H_CHANNEL,
    H_CONSTRAIN,
    H_END,
    H_MESSAGE,
    H_START,
    grammar_harmony,
    write_harmony,
)
from mesh_llm.serving.engine.dialects._hermes import (
    HERMES_CLOSE,
    HERMES_OPEN,
    HermesRegion,
    grammar_hermes,
    write_hermes,
)
from mesh_llm.serving.engine.dialects._json import (
    MistralNamedRegion,
    grammar_llama3,
    grammar_mistral,
    grammar_mistral_args,
    json_objects,
    mistral_id,
    write_json,
    write_llama3,
    write_mistral,
    write_mistral_args,
)
from mesh_llm.serving.engine.dialects._sections import (
    DS_CALL_BEGIN,
    DS_CALL_END,
    DS_CALLS_BEGIN,
    DS_CALLS_END,
    DS_SEP,
    KIMI_ARGS,
    KIMI_CALL_BEGIN,
    KIMI_CALL_END,
    KIMI_SECTION_BEGIN,
    KIMI_SECTION_END,
    deepseek_region,
    grammar_deepseek_r1,
    grammar_deepseek_v31,
    grammar_kimi,
    kimi_region,
    write_deepseek_r1,
    write_deepseek_v31,
    write_kimi,
)
from mesh_llm.serving.engine.dialects._xml import (
    JsonOrXmlRegion,
    glm_region,
    grammar_glm,
    grammar_qwen3_coder,
    write_glm,
    write_qwen3_coder,
)


def _hermes_only(opener: str, schemas: Schemas) -> Region:
    return HermesRegion(schemas)


def _fallback_region(opener: str, schemas: Schemas) -> Region:
    if opener == HERMES_OPEN:
        return HermesRegion(schemas)
    if opener == MISTRAL_CALLS:
        return MistralNamedRegion(schemas)
    return json_objects(schemas)


_THINK = ("<think>", "</think>")
_JSON_LEADS = ("{", "[", "```json")  # openings of an answer that may be wholly a plain-JSON call


def _has(*needles: str) -> Callable[[str], bool]:
    return lambda source: all(n in source for n in needles)


HERMES = Dialect(
    "hermes", _has(HERMES_OPEN), (HERMES_OPEN,), _hermes_only, "json", write_hermes, grammar_hermes,
    markers=(HERMES_OPEN, HERMES_CLOSE),
)  # fmt: skip
QWEN3 = replace(HERMES, name="qwen3", detect=_has(HERMES_OPEN, "<think>"), reasoning=_THINK,
                markers=(HERMES_OPEN, HERMES_CLOSE, *_THINK))  # fmt: skip
QWEN3_CODER = Dialect(
    "qwen3-coder", _has("<function=", "<parameter="), (HERMES_OPEN,), lambda o, s: JsonOrXmlRegion(s), "xml",
    write_qwen3_coder, grammar_qwen3_coder, reasoning=_THINK, markers=(HERMES_OPEN, HERMES_CLOSE, *_THINK),
    value_close="</parameter>",
)  # fmt: skip
GLM = Dialect(
    "glm", _has("<arg_key>", "<arg_value>"), (HERMES_OPEN,), lambda o, s: glm_region(s), "xml", write_glm,
    grammar_glm, reasoning=_THINK,
    markers=(HERMES_OPEN, HERMES_CLOSE, "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", *_THINK),
    value_close="</arg_value>",
)  # fmt: skip
HARMONY = Dialect(
    "harmony", _has(H_CHANNEL, H_MESSAGE), (), _hermes_only, "json", write_harmony, grammar_harmony,
    markers=(H_START, H_CHANNEL, H_MESSAGE, H_CONSTRAIN, H_END), harmony=True,
)  # fmt: skip
_DS_MARKERS = (DS_CALLS_BEGIN, DS_CALLS_END, DS_CALL_BEGIN, DS_CALL_END, DS_SEP, *_THINK)
DEEPSEEK_R1 = Dialect(
    "deepseek-r1", _has(DS_CALLS_BEGIN, "```json"), (DS_CALLS_BEGIN,), lambda o, s: deepseek_region(s), "json",
    write_deepseek_r1, grammar_deepseek_r1, reasoning=_THINK, markers=_DS_MARKERS,
)  # fmt: skip
DEEPSEEK_V31 = replace(DEEPSEEK_R1, name="deepseek-v3.1", detect=_has(DS_CALLS_BEGIN), write=write_deepseek_v31,
                       call_grammar=grammar_deepseek_v31)  # fmt: skip
KIMI_K2 = Dialect(
    "kimi-k2", _has(KIMI_SECTION_BEGIN), (KIMI_SECTION_BEGIN,), lambda o, s: kimi_region(s), "json", write_kimi,
    grammar_kimi, reasoning=_THINK,
    markers=(KIMI_SECTION_BEGIN, KIMI_SECTION_END, KIMI_CALL_BEGIN, KIMI_ARGS, KIMI_CALL_END, *_THINK),
)  # fmt: skip
LLAMA3 = Dialect(
    "llama3", _has("<|start_header_id|>", '"parameters"'), (PYTHON_TAG,), _fallback_region, "json",
    write_llama3, grammar_llama3, markers=(PYTHON_TAG,), json_leads=("{",), json_lead_streams=True,
)  # fmt: skip
MISTRAL_ARGS = Dialect(
    "mistral-args", _has(MISTRAL_CALLS, "[ARGS]"), (MISTRAL_CALLS,), _fallback_region, "json",
    write_mistral_args, grammar_mistral_args, markers=(MISTRAL_CALLS, "[ARGS]", "[CALL_ID]"), new_id=mistral_id,
)  # fmt: skip
MISTRAL = replace(MISTRAL_ARGS, name="mistral", detect=_has(MISTRAL_CALLS), write=write_mistral,
                  call_grammar=grammar_mistral)  # fmt: skip
FALLBACK = Dialect(
    "fallback", lambda source: True, (HERMES_OPEN, MISTRAL_CALLS, PYTHON_TAG), _fallback_region, "json",
    write_json, None, markers=(PYTHON_TAG,), json_leads=_JSON_LEADS,
)  # fmt: skip
"""Unknown templates: today's reading (Hermes blocks, Mistral, or an answer that is wholly plain
JSON, which the fallback prompt asks for). Only here is a leading `{`, `[` or ```json fence held
back while streaming: the plain-JSON call has no marker of its own, so such an answer can only be
told from text once it is complete."""

DIALECTS: tuple[Dialect, ...] = (
    HARMONY, KIMI_K2, DEEPSEEK_R1, DEEPSEEK_V31, GLM, QWEN3_CODER, QWEN3, HERMES, MISTRAL_ARGS, MISTRAL, LLAMA3,
)  # fmt: skip
"""Checked in this order: the first whose markers the template names wins (Qwen3-Coder's template
also names `<tool_call>`, so it comes before Hermes; DeepSeek R1's fenced form before V3.1's)."""


def detect_dialect(template_source: str | None) -> Dialect:
    """The family a chat template belongs to, from the markers its source names."""
    if template_source:
        for dialect in DIALECTS:
            if dialect.detect(template_source):
                return dialect
    return FALLBACK


def tool_schemas(tools: Sequence[dict[str, Any]]) -> Schemas:
    """Tool name -> parameters schema, from validated OpenAI `tools`."""
    return {t["function"]["name"]: t["function"].get("parameters") or dict(DEFAULT_PARAMETERS) for t in tools}


def starts_in_reasoning(dialect: Dialect, prompt: str) -> bool:
    """Whether the prompt opened a reasoning block that the answer continues (R1's `<think>\\n`)."""
    return dialect.reasoning is not None and prompt.rstrip().endswith(dialect.reasoning[0])
