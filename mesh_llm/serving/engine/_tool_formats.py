"""Calls written as JSON: the readers that the JSON-writing entries of the `dialects` table share.

    Llama 3.x       {"name": "f", "parameters": {...}}  (whole text; `<|python_tag|>` and `;` lists)
    Mistral         [TOOL_CALLS][{"name": "f", "arguments": {...}}]  or  [TOOL_CALLS]f[ARGS]{...}
    plain JSON      {"name": "f", "arguments": {...}}  or an array of them: what the forced grammar
                    and the fallback prompt of `_chat` produce (also inside a ```json fence)

Each reader gives `(name, arguments JSON text)` pairs, or None where the text is no call of ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

MISTRAL_CALLS, MISTRAL_ARGS_TAG, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
PYTHON_TAG = "<|python_tag|>"

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)
DECODER = json.JSONDecoder()
BAD_JSON = (ValueError, RecursionError)
"""What decoding JSON may raise: nesting thousands deep makes the json module recurse out of
stack, which to us is just not JSON."""

Calls = list[tuple[str, str]]  # [(name, arguments JSON text)]


def mistral_calls(rest: str, names: Collection[str]) -> Calls | None:
    """The calls in what follows Mistral's `[TOOL_CALLS]`: a JSON array (or object) of calls, or
    `name[ARGS]{...}` pieces."""
    if rest.lstrip().startswith(("[", "{")):
        return json_calls(rest, names)
    return _mistral_named(rest, names)


def _mistral_named(rest: str, names: Collection[str]) -> Calls | None:
    """`name[ARGS]{...}` pieces (`[CALL_ID]id` may sit before `[ARGS]`), split on [TOOL_CALLS]."""
    calls: Calls = []
    for piece in rest.split(MISTRAL_CALLS):
        if not piece.strip():
            continue
        head, sep, args_text = piece.partition(MISTRAL_ARGS_TAG)
        name = head.partition(MISTRAL_CALL_ID)[0].strip()
        if not sep or name not in names:
            return None
        arguments = _arguments_text(_loads(args_text.strip()))
        if arguments is None:
            return None
        calls.append((name, arguments))
    return calls


def whole_json(text: str, names: Collection[str]) -> Calls | None:
    """The calls when `text` is wholly JSON calls (after `<|python_tag|>`, or in a ```json fence)."""
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG) :]
    fence = _FENCE.match(body.strip())
    if fence:
        body = fence.group(1)
    return json_calls(body, names) or None


def json_calls(body: str, names: Collection[str]) -> Calls | None:
    """The calls when `body` is wholly a call object, an array of them, or objects joined by `;`."""
    values: list[Any] = []
    pos = skip_space(body, 0)
    while pos < len(body):
        try:
            value, pos = DECODER.raw_decode(body, pos)
        except BAD_JSON:
            return None
        values.extend(value if isinstance(value, list) else [value])
        pos = skip_space(body, pos)
        if body.startswith(";", pos):
            pos = skip_space(body, pos + 1)
    if not values:
        return None
    calls = [call_of(value, names) for value in values]
    if any(call is None for call in calls):
        return None  # one non-call makes the whole answer plain JSON, not calls
    return [call for call in calls if call is not None]


def call_of(value: Any, names: Collection[str]) -> tuple[str, str] | None:
    """(name, arguments JSON text) when `value` is a call of a function in `names`."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # the OpenAI shape, which some models echo
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    arguments = value.get("arguments", value.get("parameters"))
    text = _arguments_text({} if arguments is None else arguments)
    return None if text is None else (name, text)


def _arguments_text(arguments: Any) -> str | None:
    """The JSON text of an arguments object, given as an object or as JSON text of one."""
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    if isinstance(arguments, str) and isinstance(_loads(arguments), dict):
        return arguments
    return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except BAD_JSON:
        return None


def skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
