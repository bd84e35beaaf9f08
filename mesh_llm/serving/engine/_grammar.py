"""JSON schemas -> GBNF grammars for llama.cpp: `response_format` and forced tool calls."""

from __future__ import annotations

import json
from typing import Any

from mesh_llm.serving.engine._openai import RequestError

# llama-cpp-python's JSON-schema converter lets raw control characters into strings (llama.cpp's
# own converter excludes them); JSON forbids them, so tighten the rule.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


_MAX_ENUM_RANGE = 1000


def _ranges_as_enums(schema: Any) -> Any:
    """The converter ignores minimum/maximum: a bounded integer range of up to a thousand
    values becomes an enum of them, which it does enforce. Wider ranges stay unenforced."""
    if isinstance(schema, list):
        return [_ranges_as_enums(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _ranges_as_enums(v) for k, v in schema.items()}
    lo, hi = out.get("minimum"), out.get("maximum")
    if (
        out.get("type") == "integer"
        and isinstance(lo, int)
        and isinstance(hi, int)
        and 0 <= hi - lo <= _MAX_ENUM_RANGE
    ):
        out = {k: v for k, v in out.items() if k not in ("type", "minimum", "maximum")}
        out["enum"] = list(range(lo, hi + 1))
    return out


MAX_GRAMMAR_CHARS = 64 * 1024  # the grammar is applied to every token of the batch's other slots too


def json_grammar(schema: dict[str, Any], param: str = "response_format.json_schema.schema") -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = str(json_schema_to_gbnf(json.dumps(_ranges_as_enums(schema))))
    except Exception as exc:  # the converter raises bare exceptions on schemas it cannot express
        detail = str(exc) if isinstance(exc, ValueError | TypeError) and str(exc) else type(exc).__name__
        raise RequestError(
            f"this JSON schema cannot be turned into a grammar ({detail}); "
            "supported: type, properties, required, items, enum, const, anyOf/oneOf, string lengths, local $defs",
            param=param,
        ) from exc
    return finish_grammar(grammar, param)


def prepare_schema(schema: Any) -> Any:
    """A schema as the converter should see it (bounded integer ranges as enums)."""
    return _ranges_as_enums(schema)


def finish_grammar(grammar: str, param: str = "tools") -> str:
    """A converter-made grammar with JSON strings kept strict, checked against the size limit."""
    grammar = grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise RequestError(
            f"this JSON schema makes a grammar of {len(grammar)} characters; the limit is {MAX_GRAMMAR_CHARS}",
            param=param,
        )
    return grammar


def any_json_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)
