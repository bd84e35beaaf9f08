"""Turning an HTTP request into a job to run: body limit, JSON, validation, template, tokens.

Everything here happens before a response starts, so every failure is a RequestError that the
app answers with a JSON error and a proper status.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request

from mesh_llm.serving.engine._chat import ChatError, ChatTemplate, normalize_messages
from mesh_llm.serving.engine._engine import Engine
from mesh_llm.serving.engine._grammar import any_json_grammar, json_grammar
from mesh_llm.serving.engine._jobs import Delta, Finished
from mesh_llm.serving.engine._llama import Model, grammar_is_valid
from mesh_llm.serving.engine._openai import (
    Options,
    RequestError,
    check_request_cost,
    parse_options,
    prompt_text,
)
from mesh_llm.serving.engine._tools import (
    ToolChoice,
    ToolError,
    forced_call_schema,
    resolve_tool_choice,
    validate_tools,
)
from mesh_llm.serving.engine.dialects import FALLBACK, Dialect, forced_call_grammar, starts_in_reasoning


class Channel:
    """Carries one job's events from the engine thread into this event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[Delta | Finished] = asyncio.Queue()

    def emit(self, event: Delta | Finished) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass
class Prepared:
    """A request ready to run: tokens, options and what to do with the output."""

    tokens: list[int]
    options: Options
    max_tokens: int
    grammar: str | None
    tools: list[dict[str, Any]]
    tool_choice: ToolChoice | None
    dialect: Dialect = FALLBACK  # how the answer writes calls and reasoning (chat only)
    in_reasoning: bool = False  # the prompt opened a reasoning block that the answer continues


class RequestReader:
    """Reads and checks requests for one engine, model and chat template."""

    def __init__(
        self, engine: Engine, model: Model, template: ChatTemplate | None, *, alias: str, max_body: int
    ) -> None:
        self.engine = engine
        self.model = model
        self.template = template
        self.alias = alias
        self.max_body = max_body
        self.dialect = template.dialect if template is not None else FALLBACK
        # The dialect's markers must reach its parser, also where the vocabulary makes them control
        # tokens (harmony's <|channel|>, Kimi's and DeepSeek's call sections, Mistral's [TOOL_CALLS]).
        model.show_markers(self.dialect.markers)

    async def body(self, request: Request) -> dict[str, Any]:
        """The request's JSON object, read within the body limit."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise RequestError(
                f"the request body is {int(length)} bytes; the limit is {self.max_body}",
                code="request_too_large",
                status=413,
            )
        size = 0
        parts = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(
                    f"the request body is over the limit of {self.max_body} bytes",
                    code="request_too_large",
                    status=413,
                )
            parts.append(chunk)
        try:
            body = json.loads(b"".join(parts))
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object", code="invalid_json")
        check_request_cost(body)
        return body

    def _tokenize(self, text: str, *, chat: bool) -> list[int]:
        add_bos = self.model.add_bos
        if chat and add_bos:
            bos = self.model.special_text("bos")
            add_bos = not (bos and text.startswith(bos))  # templates that write BOS themselves
        return self.model.tokenize(text, add_special=add_bos, parse_special=chat)

    async def _prepare_tokens(self, text: str, *, chat: bool) -> list[int]:
        if len(text) > self.max_body:
            raise RequestError("the prompt is too long", code="context_length_exceeded")
        # A long prompt tokenizes in a worker thread: the decode loop and other requests go on.
        tokens = await asyncio.to_thread(self._tokenize, text, chat=chat)
        limit = self.engine.n_ctx_slot
        if len(tokens) >= limit:
            raise RequestError(
                f"This model's context is {limit} tokens per request; the prompt has {len(tokens)} tokens. "
                "Shorten it, or start the node with a larger --ctx-size.",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        if not tokens:
            raise RequestError("the prompt is empty", param="prompt")
        return tokens

    def _max_tokens(self, options: Options, n_prompt: int) -> int:
        room = self.engine.n_ctx_slot - n_prompt
        return max(1, min(options.max_tokens or room, room))

    async def _format_grammar(self, options: Options) -> str | None:
        if options.response_format.kind == "json_object":
            return any_json_grammar()
        if options.response_format.kind == "json_schema":
            assert options.response_format.schema is not None
            return await self._grammar(options.response_format.schema, "response_format.json_schema.schema")
        return None

    async def _grammar(self, schema: dict[str, Any], param: str) -> str:
        """Schema -> checked GBNF, in a worker thread (big schemas take a while)."""

        def build() -> str:
            grammar = json_grammar(schema, param)
            if not grammar_is_valid(self.model, grammar):
                raise RequestError(
                    "llama.cpp cannot use the grammar this schema makes (an empty enum?)", param=param
                )
            return grammar

        return await asyncio.to_thread(build)

    async def prepare_chat(self, body: dict[str, Any]) -> Prepared:
        """A /v1/chat/completions body, checked, rendered with the template and tokenized."""
        options = parse_options(body, chat=True, n_vocab=self.model.n_vocab)
        if self.template is None:
            raise RequestError(
                f"{self.alias} has no chat template (it is a base model): use /v1/completions "
                "with a plain prompt instead.",
                param="messages",
                code="no_chat_template",
            )
        text, tools, choice = self._render_chat(self.template, body)
        in_reasoning = starts_in_reasoning(self.dialect, text)
        if choice.mode in ("required", "named"):
            grammar: str | None = await self._forced_grammar(
                tools, choice.name if choice.mode == "named" else None, in_reasoning
            )
        else:
            grammar = await self._format_grammar(options)
        tokens = await self._prepare_tokens(text, chat=True)
        return Prepared(
            tokens, options, self._max_tokens(options, len(tokens)), grammar, tools,
            choice if choice.mode != "none" else None, self.dialect, in_reasoning,
        )  # fmt: skip

    async def _forced_grammar(self, tools: list[dict[str, Any]], name: str | None, in_reasoning: bool) -> str:
        """A grammar for one call in the model's own dialect (plain JSON for unknown templates)."""

        def build() -> str | None:
            try:
                grammar = forced_call_grammar(self.dialect, tools, name, in_reasoning=in_reasoning)
            except RequestError:
                raise
            except Exception as exc:  # the schema converter raises bare exceptions on what it cannot express
                raise RequestError(
                    f"these tools' parameters cannot be turned into a grammar ({exc})", param="tools"
                ) from exc
            if grammar is not None and not grammar_is_valid(self.model, grammar):
                raise RequestError(
                    "llama.cpp cannot use the grammar these tools make (an empty enum?)", param="tools"
                )
            return grammar

        grammar = await asyncio.to_thread(build)
        if grammar is None:
            return await self._grammar(forced_call_schema(tools, name), "tools")
        return grammar

    def _render_chat(
        self, template: ChatTemplate, body: dict[str, Any]
    ) -> tuple[str, list[dict[str, Any]], ToolChoice]:
        """The prompt text of a chat body, with its checked tools and tool choice."""
        try:
            messages = normalize_messages(body.get("messages"))
            tools = validate_tools(body["tools"]) if body.get("tools") else []
            choice = resolve_tool_choice(body.get("tool_choice"), tools)
        except (ChatError, ToolError) as exc:
            raise RequestError(str(exc), param=getattr(exc, "param", None)) from exc
        try:
            text = template.render(messages, tools=tools if choice.mode != "none" and tools else None)
        except ChatError as exc:
            raise RequestError(str(exc), param="messages") from exc
        return text, tools, choice

    async def count_chat(self, body: dict[str, Any]) -> int:
        """How many prompt tokens a chat body makes; no context check, since counting is the point."""
        if self.template is None:
            raise RequestError(
                f"{self.alias} has no chat template (it is a base model)",
                param="messages",
                code="no_chat_template",
            )
        text, _, _ = self._render_chat(self.template, body)
        if len(text) > self.max_body:
            raise RequestError("the prompt is too long", code="context_length_exceeded")
        return len(await asyncio.to_thread(self._tokenize, text, chat=True))

    async def prepare_completion(self, body: dict[str, Any]) -> Prepared:
        """A /v1/completions body, checked and tokenized."""
        options = parse_options(body, chat=False, n_vocab=self.model.n_vocab)
        text = prompt_text(body)
        grammar = await self._format_grammar(options)
        max_tokens = options.max_tokens if options.max_tokens is not None else 16  # OpenAI's default here
        tokens = await self._prepare_tokens(text, chat=False)
        options = replace(options, max_tokens=max_tokens)
        return Prepared(tokens, options, self._max_tokens(options, len(tokens)), grammar, [], None)
