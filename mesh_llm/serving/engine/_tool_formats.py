"""Reading tool calls back out of generated text, in each model family's dialect.

Models write calls in their own dialects; `parse_tool_calls` reads the common ones:

    Hermes / Qwen   <tool_call>{"name": "f", "arguments": {...}}</tool_call>  (one or more blocks)
    Llama 3.x       {"name": "f", "parameters": {...}}  (whole text; `<|python_tag|>` and `;` lists)
    Mistral         [TOOL_CALLS][{"name": "f", "arguments": {...}}]  or  [TOOL_CALLS]f[ARGS]{...}
    plain JSON      {"name": "f", "arguments": {...}}  or an array of them: what the forced grammar
                    and the fallback prompt of `_chat` produce (also inside a ```json fence)

While streaming under `tool_choice: auto`, `may_become_tool_call` and `content_before_call` tell
the server which text it may send as content before the answer is complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from mesh_llm.serving.engine._tools import ToolCall, new_call_id

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
PYTHON_TAG = "<|python_tag|>"

# Openings of text that may turn into a call. "```json" holds back a fenced JSON answer, which
# parse_tool_calls also reads, while "```python" and other fences are released at their 4th char.
CALL_MARKERS = (HERMES_OPEN, MISTRAL_CALLS, PYTHON_TAG, "{", "[", "```json")
# Markers that may follow ordinary content in the same answer.
_INLINE_MARKERS = (HERMES_OPEN, MISTRAL_CALLS)
# What a stream holds back at its end under tool_choice auto: the start of any of these.
HOLD_MARKERS = (HERMES_OPEN, MISTRAL_CALLS, PYTHON_TAG)

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)
_DECODER = json.JSONDecoder()
# Nesting thousands deep makes the json module recurse out of stack; to us that is just not JSON.
_BAD_JSON = (ValueError, RecursionError)


def parse_tool_calls(
    text: str, tool_names: Collection[str], new_id: Callable[[], str] = new_call_id
) -> tuple[str, list[ToolCall]]:
    """Split a model's answer into its text content and the tool calls it makes.

    Only calls of functions in `tool_names` count. When the answer holds no such call, it comes
    back unchanged with no calls; otherwise the content is what is left once the calls are taken
    out, stripped (often "").
    """
    if not tool_names:
        return text, []
    found = _hermes(text, tool_names) or _mistral(text, tool_names) or _whole_json(text, tool_names)
    if found is None:
        return text, []
    content, calls = found
    return content, [ToolCall(new_id(), name, arguments) for name, arguments in calls]


_Found = tuple[str, list[tuple[str, str]]]  # (content, [(name, arguments JSON text)])


def _hermes(text: str, names: Collection[str]) -> _Found | None:
    if HERMES_OPEN not in text:
        return None
    kept: list[str] = []  # text outside the calls, including blocks that are no call of ours
    calls: list[tuple[str, str]] = []
    pos = 0
    while (start := text.find(HERMES_OPEN, pos)) >= 0:
        kept.append(text[pos:start])
        body = start + len(HERMES_OPEN)
        call, end = _hermes_block(text, body, names)
        if call is None:
            kept.append(text[start:end])
        else:
            calls.append(call)
        pos = end
    kept.append(text[pos:])
    if not calls:
        return None
    return "".join(kept).strip(), calls


def _hermes_block(text: str, body: int, names: Collection[str]) -> tuple[tuple[str, str] | None, int]:
    """The call in the block whose body starts at `body`, and where the block ends."""
    close = text.find(HERMES_CLOSE, body)
    block_end = len(text) if close < 0 else close + len(HERMES_CLOSE)
    # Decoding the JSON first (rather than cutting at the close tag) lets argument strings hold
    # "</tool_call>" themselves.
    try:
        value, after = _DECODER.raw_decode(text, _skip_space(text, body))
    except _BAD_JSON:
        return None, block_end
    after = _skip_space(text, after)
    if text.startswith(HERMES_CLOSE, after):
        end = after + len(HERMES_CLOSE)
    elif after == len(text) or text.startswith(HERMES_OPEN, after):  # the close tag never came
        end = after
    else:
        return None, block_end
    return _call_of(value, names), end


def _mistral(text: str, names: Collection[str]) -> _Found | None:
    start = text.find(MISTRAL_CALLS)
    if start < 0:
        return None
    content = text[:start].strip()
    rest = text[start + len(MISTRAL_CALLS) :]
    if rest.lstrip().startswith(("[", "{")):
        calls = _json_calls(rest, names)
    else:
        calls = _mistral_named(rest, names)
    if not calls:
        return None
    return content, calls


def _mistral_named(rest: str, names: Collection[str]) -> list[tuple[str, str]] | None:
    """`name[ARGS]{...}` pieces (`[CALL_ID]id` may sit before `[ARGS]`), split on [TOOL_CALLS]."""
    calls: list[tuple[str, str]] = []
    for piece in rest.split(MISTRAL_CALLS):
        if not piece.strip():
            continue
        head, sep, args_text = piece.partition(MISTRAL_ARGS)
        name = head.partition(MISTRAL_CALL_ID)[0].strip()
        if not sep or name not in names:
            return None
        arguments = _arguments_text(_loads(args_text.strip()))
        if arguments is None:
            return None
        calls.append((name, arguments))
    return calls


def _whole_json(text: str, names: Collection[str]) -> _Found | None:
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG) :]
    fence = _FENCE.match(body.strip())
    if fence:
        body = fence.group(1)
    calls = _json_calls(body, names)
    return ("", calls) if calls else None


def _json_calls(body: str, names: Collection[str]) -> list[tuple[str, str]] | None:
    """The calls when `body` is wholly a call object, an array of them, or objects joined by `;`."""
    values: list[Any] = []
    pos = _skip_space(body, 0)
    while pos < len(body):
        try:
            value, pos = _DECODER.raw_decode(body, pos)
        except _BAD_JSON:
            return None
        values.extend(value if isinstance(value, list) else [value])
        pos = _skip_space(body, pos)
        if body.startswith(";", pos):
            pos = _skip_space(body, pos + 1)
    if not values:
        return None
    calls = [_call_of(value, names) for value in values]
    if any(call is None for call in calls):
        return None  # one non-call makes the whole answer plain JSON, not calls
    return [call for call in calls if call is not None]


def _call_of(value: Any, names: Collection[str]) -> tuple[str, str] | None:
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
    except _BAD_JSON:
        return None


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


# ── streaming ──────────────────────────────────────────────────────────────────────────────────


def may_become_tool_call(text: str) -> bool:
    """Whether the answer so far could still turn out to be a tool call, so must be held back.

    True when the text, ignoring leading whitespace, is a prefix of a call marker (`<tool_call>`,
    `[TOOL_CALLS]`, `<|python_tag|>`, `{`, `[`, a ```json fence) or starts with one. All-space
    text is held too: what follows decides.
    """
    head = text.lstrip()
    return any(head.startswith(marker) or marker.startswith(head) for marker in CALL_MARKERS)


def content_before_call(text: str) -> int:
    """Where the first call marker that may follow content (`<tool_call>`, `[TOOL_CALLS]`) begins
    in `text`, or -1: the content before it can stream."""
    found = [i for i in (text.find(marker) for marker in _INLINE_MARKERS) if i >= 0]
    return min(found, default=-1)


def streamable_prefix(text: str) -> int:
    """How much of `text` can stream as content now: up to the first inline call marker, and short
    of a trailing partial marker (`...<tool_` may be a call about to start)."""
    cut = content_before_call(text)
    if cut >= 0:
        return cut
    return len(text) - marker_tail(text, _INLINE_MARKERS)


def marker_tail(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best
