"""Tools for templates written without them: the system text that offers the tools, and past
tool calls and results rewritten as plain turns.

The tool list goes into a system message (or the first user turn, for templates that refuse a
system role) with an instruction to answer a call in the family's own syntax, bare JSON for
templates of no known family; calls already made are written back in that same syntax, so the
model sees one way of calling and the template never meets a turn it cannot render.
"""

from __future__ import annotations

import json
from typing import Any

from mesh_llm.serving.engine.dialects import FALLBACK, Dialect


def fallback_tool_prompt(tools: list[dict[str, Any]], dialect: Dialect = FALLBACK) -> str:
    """The system text that offers `tools` to a model whose template cannot list them.

    The requested answer is what the forced-call grammar produces for the template's family, so
    one parser reads both: bare JSON for templates of no known family, else the family's syntax.
    """
    listing = "\n".join(json.dumps(tool.get("function", tool), ensure_ascii=False) for tool in tools)
    if dialect is not FALLBACK:
        example = dialect.write([("<tool name>", {"<argument name>": "<value>"})])
        return (
            "You can call the following tools. Each is described by a JSON schema:\n"
            f"{listing}\n\n"
            f"To call a tool, reply in exactly this format:\n{example}\n"
            "If no tool is needed, answer normally."
        )
    return (
        "You can call the following tools. Each is described by a JSON schema:\n"
        f"{listing}\n\n"
        "To call a tool, reply with exactly one JSON object and nothing else:\n"
        '{"name": <tool name>, "arguments": {<argument name>: <value>, ...}}\n'
        "To call several tools at once, reply with a JSON array of such objects. "
        "If no tool is needed, answer normally."
    )


def with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        own = messages[0]["content"]
        return [{**messages[0], "content": f"{own}\n\n{text}" if own else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def with_user_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    # The system message (if any) goes too: the template that refused our system turn refuses it.
    out: list[dict[str, Any]] = []
    prefix = text
    if messages and messages[0]["role"] == "system":
        if messages[0]["content"]:
            prefix = f"{messages[0]['content']}\n\n{text}"
        messages = messages[1:]
    for msg in messages:
        if prefix and msg["role"] == "user":
            msg = {**msg, "content": f"{prefix}\n\n{msg['content']}"}
            prefix = ""
        out.append(msg)
    if prefix:  # no user turn at all: the instructions become one
        out.insert(0, {"role": "user", "content": prefix})
    return out


def _call_spec(call: dict[str, Any]) -> tuple[str, Any]:
    fn = call["function"]
    arguments = fn["arguments"]
    return fn["name"], arguments if isinstance(arguments, dict) else {}


def without_tool_turns(messages: list[dict[str, Any]], dialect: Dialect = FALLBACK) -> list[dict[str, Any]]:
    """Past tool calls and results as plain turns, for templates that know no tool role.

    A call becomes what the fallback prompt asks for; a result becomes a user turn. Results
    and any user turn right after them merge into one user turn, because templates that know no
    tool role often insist that user and assistant turns alternate.
    """
    out: list[dict[str, Any]] = []
    merge_next_user = False  # the last turn in `out` is a user turn made from tool results
    for msg in messages:
        role = msg["role"]
        if role == "assistant" and "tool_calls" in msg:
            if dialect is FALLBACK:  # arguments that are no JSON object stay as the client sent them
                calls = [
                    {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                    for c in msg["tool_calls"]
                ]
                text = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            else:
                text = dialect.write([_call_spec(c) for c in msg["tool_calls"]])
            content = f"{msg['content']}\n{text}" if msg["content"] else text
            out.append({"role": "assistant", "content": content})
            merge_next_user = False
        elif role == "tool" or (role == "user" and merge_next_user):
            if role == "tool":
                label = f"Tool result ({msg['name']})" if msg.get("name") else "Tool result"
                text = f"{label}: {msg['content']}"
            else:
                text = msg["content"]
            if merge_next_user or (role == "tool" and out and out[-1]["role"] == "user"):
                out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{text}"}
            else:
                out.append({"role": "user", "content": text})
            merge_next_user = role == "tool" or merge_next_user
        else:
            out.append(msg)
            merge_next_user = False
    return out
