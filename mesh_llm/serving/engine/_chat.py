"""OpenAI chat messages -> prompt text, through the model's own Jinja chat template.

The flow, all pure (no model, no HTTP):

    request JSON ──normalize_messages──▶ plain message dicts ──ChatTemplate.render──▶ prompt text

1. `normalize_messages` validates what an OpenAI client sends and reduces it to the shape chat
   templates expect (the shape Hugging Face's `apply_chat_template` passes): `developer` becomes
   `system`, content parts become one string, assistant `tool_calls` carry their arguments as a
   dict where they parse to one, and tool results learn the name of the function they answer.
   Anything malformed raises `ChatError` naming the offending field, which the HTTP layer turns
   into a 400 in OpenAI's error shape.
2. `ChatTemplate` compiles the GGUF's `tokenizer.chat_template` once in Jinja's sandbox (no
   internal attributes, no unsafe calls; lists and dicts may change, each render's own), with the helpers Hugging Face templates call (`raise_exception`, `strftime_now`,
   a `tojson` that keeps non-ASCII text), and renders a prompt per request.
3. Templates written without tool support still get tools: the tool list goes into a system
   message with an instruction to answer a call in the family's own syntax (bare JSON for
   templates of no known family; see `dialects`), and past tool calls and tool results are
   rewritten as plain assistant and user text, calls in that same syntax, so that such a template
   never fails on them and the model sees one way of calling (`_tool_fallback`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import SandboxedEnvironment

from mesh_llm.serving.engine._tool_fallback import (
    fallback_tool_prompt,
    with_system_text,
    with_user_text,
    without_tool_turns,
)
from mesh_llm.serving.engine.dialects import Dialect, detect_dialect

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
"""Roles a client may send; `developer` is read as `system`, legacy `function` as `tool`."""

# Part types that carry media: named in the error so a client learns why, not just that, it failed.
_MEDIA_PARTS = ("image_url", "image", "input_image", "input_audio", "audio", "file", "video_url")

# A template that names `tools` renders the tool list itself; `\b` keeps `tool_calls` from counting.
_TOOLS_VARIABLE = re.compile(r"\btools\b")


class ChatError(ValueError):
    """A chat request the server cannot turn into a prompt.

    `param` names the offending field in OpenAI's style (`messages[2].content`), or is None when
    the fault lies with the model's template rather than one field of the request.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ── normalization ──────────────────────────────────────────────────────────────────────────────


def normalize_messages(messages: object) -> list[dict[str, Any]]:
    """Validate an OpenAI `messages` array and return it in the shape chat templates expect.

    Every returned message has a `role` (system, user, assistant or tool) and a string `content`.
    Assistant messages may add `tool_calls` (each `{id, type: "function", function: {name,
    arguments}}`, `arguments` a dict when the client's JSON text parses to one); tool messages add
    `tool_call_id` and, when known, `name`. Other keys are dropped. Raises `ChatError`.
    """
    if not isinstance(messages, list):
        raise ChatError("'messages' must be an array of message objects", "messages")
    if not messages:
        raise ChatError("'messages' must hold at least one message", "messages")
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name, from earlier assistant turns
    for i, raw in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise ChatError(f"{where} must be an object", where)
        role = raw.get("role")
        if not isinstance(role, str) or role not in ROLES:
            allowed = ", ".join(repr(r) for r in ROLES)
            raise ChatError(f"{where}.role must be one of {allowed}; got {role!r}", f"{where}.role")
        if role == "assistant":
            msg = _assistant_message(raw, where)
            for call in msg.get("tool_calls", ()):
                call_names[call["id"]] = call["function"]["name"]
        elif role in ("tool", "function"):
            msg = _tool_message(raw, where, role, call_names)
        else:
            msg = {"role": "system" if role == "developer" else role}
            msg["content"] = _content_text(raw.get("content"), f"{where}.content", role)
            name = raw.get("name")
            if isinstance(name, str) and name:
                msg["name"] = name
        out.append(msg)
    return out


def _content_text(content: object, where: str, role: str) -> str:
    """One string from a message's content: a string, null (assistant only) or a list of parts."""
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant":
            return ""
        raise ChatError(f"{where} is required for a {role!r} message", where)
    if not isinstance(content, list):
        raise ChatError(f"{where} must be a string or an array of content parts", where)
    texts: list[str] = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ChatError(f"{here} must be an object with a 'type'", here)
        kind = part.get("type")
        # Assistant turns echoed back by clients may hold refusal parts; they are text too.
        key = "refusal" if kind == "refusal" and role == "assistant" else "text"
        if kind == key:
            text = part.get(key)
            if not isinstance(text, str):
                raise ChatError(f"{here}.{key} must be a string", f"{here}.{key}")
            texts.append(text)
        elif kind in _MEDIA_PARTS:
            raise ChatError(f"this model server takes text only; {here} is a {kind!r} part", here)
        else:
            raise ChatError(f"{here}.type {kind!r} is not a supported content part type", f"{here}.type")
    # Joined with nothing in between, as the parts were sent: a client that wants a line break
    # between parts writes one, and adding our own would change the text it tokenizes.
    return "".join(texts)


def _assistant_message(raw: dict[str, Any], where: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant"}
    msg["content"] = _content_text(raw.get("content"), f"{where}.content", "assistant")
    name = raw.get("name")
    if isinstance(name, str) and name:
        msg["name"] = name
    calls = raw.get("tool_calls")
    if calls is None:
        return msg
    if not isinstance(calls, list):
        raise ChatError(f"{where}.tool_calls must be an array", f"{where}.tool_calls")
    if calls:  # an empty list is left out: templates test `message.tool_calls is defined`
        msg["tool_calls"] = [_tool_call(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls)]
    return msg


def _tool_call(call: object, where: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise ChatError(f"{where} must be an object", where)
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise ChatError(f"{where}.id must be a non-empty string", f"{where}.id")
    if call.get("type", "function") != "function":
        raise ChatError(f"{where}.type must be 'function'", f"{where}.type")
    fn = call.get("function")
    if not isinstance(fn, dict):
        raise ChatError(f"{where}.function must be an object", f"{where}.function")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ChatError(f"{where}.function.name must be a non-empty string", f"{where}.function.name")
    arguments = fn.get("arguments", "{}")
    if isinstance(arguments, str):
        # Templates disagree on what they want (`arguments | tojson`, `arguments.items()`); a dict
        # serves both, so hand one over when the text is a JSON object, else keep the text.
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):  # deep nesting overflows the parser: still not a dict
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
    elif not isinstance(arguments, dict):
        raise ChatError(f"{where}.function.arguments must be a JSON string", f"{where}.function.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_message(raw: dict[str, Any], where: str, role: str, call_names: dict[str, str]) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "role": "tool",
        "content": _content_text(raw.get("content"), f"{where}.content", role),
    }
    call_id = raw.get("tool_call_id")
    if role == "tool":
        if not isinstance(call_id, str) or not call_id:
            raise ChatError(f"{where}.tool_call_id must be a non-empty string", f"{where}.tool_call_id")
        msg["tool_call_id"] = call_id
    name = raw.get("name")
    if not (isinstance(name, str) and name) and isinstance(call_id, str):
        name = call_names.get(call_id)
    if isinstance(name, str) and name:
        msg["name"] = name
    elif role == "function":  # the legacy shape has no id, so the name is all that ties it to a call
        raise ChatError(f"{where}.name must be a non-empty string", f"{where}.name")
    return msg


# ── templates ──────────────────────────────────────────────────────────────────────────────────


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes for HTML and forces ASCII; prompts want the text as written.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _fresh(value: Any) -> Any:
    """A copy of JSON-shaped data whose lists and dicts are all new, for a template to change."""
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


def _raise_exception(message: str) -> None:
    raise ChatError(f"the model's chat template rejected the request: {message}", "messages")


class ChatTemplate:
    """A GGUF chat template compiled once and rendered per request.

    `now` is the clock behind the templates' `strftime_now` (Llama 3.x prints today's date); tests
    pass a fixed one.
    """

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.source = source
        self.dialect: Dialect = detect_dialect(source)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._now = now
        # Sandboxed (no `__class__`, no unsafe calls) but not immutable: templates such as
        # Kimi-K2-Thinking's append to lists of their own. What they are given is a fresh copy per
        # render (`_fresh`), so what they change is theirs alone.
        env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = self._strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatError(f"the model's chat template does not compile: {e}") from e

    @property
    def supports_tools(self) -> bool:
        """Whether the template renders a `tools` list itself (else `render` falls back)."""
        return _TOOLS_VARIABLE.search(self.source) is not None

    def _strftime_now(self, fmt: str) -> str:
        return self._now().strftime(fmt)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text for `messages` (as `normalize_messages` returns them) and `tools` (as
        `validate_tools` returns them). Raises `ChatError` when the template fails or refuses."""
        if self.supports_tools:
            return self._render(messages, tools or None, add_generation_prompt)
        plain = without_tool_turns(messages, self.dialect)
        if not tools:
            return self._render(plain, None, add_generation_prompt)
        instructions = fallback_tool_prompt(tools, self.dialect)
        try:
            return self._render(with_system_text(plain, instructions), None, add_generation_prompt)
        except ChatError:
            # Some templates (Gemma's, early Mistral's) refuse a system role: tell the user turn.
            return self._render(with_user_text(plain, instructions), None, add_generation_prompt)

    def _render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> str:
        context: dict[str, Any] = {
            "messages": _fresh(messages),
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if tools:  # left undefined otherwise: templates test both `tools is defined` and `if tools`
            context["tools"] = _fresh(tools)
        try:
            return self._template.render(context)
        except ChatError:
            raise
        except jinja2.TemplateError as e:
            raise ChatError(f"the model's chat template failed on this conversation: {e}", "messages") from e
        except Exception as e:  # a template is foreign code: whatever it trips on is a bad request here
            raise ChatError(
                f"the model's chat template failed on this conversation: {type(e).__name__}: {e}", "messages"
            ) from e
