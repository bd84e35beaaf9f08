"""Forced calls: a GBNF grammar for an answer that is one call in the family's own syntax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mesh_llm.serving.engine.dialects._base import Dialect
from mesh_llm.serving.engine.dialects._gbnf import ToolRules, lit, text_without
from mesh_llm.serving.engine.dialects._harmony import H_CHANNEL, H_END, H_MESSAGE, H_START
from mesh_llm.serving.engine.dialects._table import tool_schemas


def forced_call_grammar(
    dialect: Dialect, tools: Sequence[dict[str, Any]], name: str | None, *, in_reasoning: bool
) -> str | None:
    """A GBNF grammar for an answer that is one call, of tool `name` or of any tool, written in the
    dialect's own syntax (after optional reasoning); None where the family keeps plain JSON."""
    if dialect.call_grammar is None:
        return None
    from llama_cpp.llama_grammar import SchemaConverter

    from mesh_llm.serving.engine._grammar import finish_grammar, prepare_schema

    conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    alternatives = []
    for i, (tool_name, params) in enumerate(tool_schemas(tools).items()):
        if name is not None and tool_name != name:
            continue
        schema = conv.resolve_refs(prepare_schema(params), f"tool{i}")
        args = conv.visit(schema, f"args{i}")
        rules: list[tuple[str, str, bool]] = []
        if dialect.arguments == "xml":
            required = set(schema.get("required") or ())
            for j, (key, prop) in enumerate((schema.get("properties") or {}).items()):
                is_text = isinstance(prop, dict) and prop.get("type") == "string" and "enum" not in prop
                value = (
                    "xml-text"
                    if is_text
                    else conv.visit(prop if isinstance(prop, dict) else {}, f"arg{i}-{j}")
                )
                rules.append((key, value, key in required))
        alternatives.append(dialect.call_grammar(ToolRules(tool_name, args, tuple(rules))))
    lines = [f"call ::= {' | '.join(f'( {a} )' for a in alternatives)}"]
    if dialect.value_close:
        lines.append(f"xml-text ::= {text_without(dialect.value_close)}")
    lines.append("gap ::= [ \\n]{0,4}")
    if dialect.harmony:
        # Reasoning may hold `<` but no `<|`: every harmony marker begins so.
        analysis = f"{lit(H_CHANNEL + 'analysis' + H_MESSAGE)} {text_without('<|')} {lit(H_END + H_START + 'assistant')}"
        lines.append(f"root ::= ( {analysis} )? call")
    elif dialect.reasoning is not None:
        open_tag, close_tag = dialect.reasoning
        lines.append(f"thought ::= {text_without(close_tag)}")
        if in_reasoning:
            lines.append(f"root ::= thought {lit(close_tag)} gap call")
        else:
            lines.append(f"root ::= ( gap {lit(open_tag)} thought {lit(close_tag)} )? gap call")
    else:
        lines.append("root ::= call")
    return finish_grammar(conv.format_grammar() + "\n" + "\n".join(lines))
