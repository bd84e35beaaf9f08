"""The model server's HTTP layer: OpenAI's /v1 routes over one Engine, on FastAPI.

Work before a response starts (body limit, JSON, validation, template, tokenizing in a
worker thread, the context check, queueing) answers with a JSON error and a proper status.
Once a stream has started, a failure becomes one SSE error event followed by ``[DONE]``;
nothing is ever sent after ``[DONE]``. A client that goes away cancels its jobs, which frees
their slots within one decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mesh_llm.api import errors as api_errors
from mesh_llm.errors import BackendError
from mesh_llm.serving.engine import _tools
from mesh_llm.serving.engine._chat import ChatError, ChatTemplate, normalize_messages
from mesh_llm.serving.engine._engine import (
    Delta,
    Engine,
    Finished,
    FinishReason,
    Job,
    QueueFull,
    TokenLogprob,
)
from mesh_llm.serving.engine._llama import Model, SamplerSpec, grammar_is_valid
from mesh_llm.serving.engine._openai import Options, RequestError, parse_options, prompt_text

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 8 * 1024 * 1024
MODEL_SERVER_ROUTES = (
    "The model server serves /mesh/health, /mesh/slots, /v1/models, /v1/chat/completions and /v1/completions."
)


@dataclass
class ServerInfo:
    """What the HTTP layer serves besides completions."""

    alias: str
    max_body: int = DEFAULT_MAX_BODY
    created: int = field(default_factory=lambda: int(time.time()))
    extra: dict[str, Callable[[], Any]] = field(default_factory=dict)  # GET /mesh/<name> routes


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


def _json_grammar(schema: dict[str, Any], param: str = "response_format.json_schema.schema") -> str:
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
    grammar = grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise RequestError(
            f"this JSON schema makes a grammar of {len(grammar)} characters; the limit is {MAX_GRAMMAR_CHARS}",
            param=param,
        )
    return grammar


def _any_json_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


class _Channel:
    """Carries one job's events from the engine thread into this event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[Delta | Finished] = asyncio.Queue()

    def emit(self, event: Delta | Finished) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass
class _Prepared:
    """A request ready to run: tokens, options and what to do with the output."""

    tokens: list[int]
    options: Options
    max_tokens: int
    grammar: str | None
    tools: list[dict[str, Any]]
    tool_choice: _tools.ToolChoice | None


class ModelApp:
    """Builds the FastAPI app around an engine, a model and its chat template."""

    def __init__(self, engine: Engine, model: Model, template: ChatTemplate | None, info: ServerInfo) -> None:
        self.engine = engine
        self.model = model
        self.template = template
        self.info = info
        self.app = self._build()

    # ---- plumbing ------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.info.max_body:
            raise RequestError(
                f"the request body is {int(length)} bytes; the limit is {self.info.max_body}",
                code="request_too_large",
                status=413,
            )
        size = 0
        parts = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.info.max_body:
                raise RequestError(
                    f"the request body is over the limit of {self.info.max_body} bytes",
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
        return body

    def _tokenize(self, text: str, *, chat: bool) -> list[int]:
        add_bos = self.model.add_bos
        if chat and add_bos:
            bos = self.model.special_text("bos")
            add_bos = not (bos and text.startswith(bos))  # templates that write BOS themselves
        return self.model.tokenize(text, add_special=add_bos, parse_special=chat)

    async def _prepare_tokens(self, text: str, *, chat: bool) -> list[int]:
        if len(text) > self.info.max_body:
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

    def _spec(self, options: Options, grammar: str | None, index: int) -> SamplerSpec:
        seed = None if options.seed is None else (options.seed + index) & 0xFFFFFFFF
        return SamplerSpec(
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            min_p=options.min_p,
            repeat_penalty=options.repeat_penalty,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            seed=seed,
            logit_bias=options.logit_bias,
            grammar=grammar,
            ban_eog=options.min_tokens > 0,
        )

    async def _start(self, prepared: _Prepared) -> list[tuple[Job, _Channel]]:
        """Submit one job per choice; all or none (a full queue cancels the ones queued)."""
        capacity = self.engine.config.n_slots + self.engine.config.max_queue
        if prepared.options.n > capacity:
            raise RequestError(
                f"n={prepared.options.n} is more choices than this server can hold at once ({capacity})",
                param="n",
            )
        loop = asyncio.get_running_loop()
        started: list[tuple[Job, _Channel]] = []
        for i in range(prepared.options.n):
            channel = _Channel(loop)
            spec = self._spec(prepared.options, prepared.grammar, i)
            try:
                # Off the decode loop and the event loop: parsing a big grammar takes a while.
                sampler = await asyncio.to_thread(self.engine.make_sampler, spec)
            except BackendError as exc:
                for j, _ in started:
                    j.cancel()
                self.engine.wake()
                raise RequestError(f"cannot sample this request: {exc}") from exc
            job = Job(
                prompt=prepared.tokens,
                max_tokens=prepared.max_tokens,
                sampling=spec,
                emit=channel.emit,
                stops=prepared.options.stops,
                logprobs=prepared.options.logprobs,
                min_tokens=prepared.options.min_tokens,
                sampler=sampler,
            )
            try:
                self.engine.submit(job)
            except QueueFull as exc:
                sampler.close()
                for j, _ in started:
                    j.cancel()
                self.engine.wake()
                raise RequestError(
                    f"The model server is busy: {exc}. Retry shortly.",
                    code="server_busy",
                    status=503,
                ) from exc
            started.append((job, channel))
        return started

    # ---- preparing requests -----------------------------------------------------------------

    async def _format_grammar(self, options: Options) -> str | None:
        if options.response_format.kind == "json_object":
            return _any_json_grammar()
        if options.response_format.kind == "json_schema":
            assert options.response_format.schema is not None
            return await self._grammar(options.response_format.schema, "response_format.json_schema.schema")
        return None

    async def _grammar(self, schema: dict[str, Any], param: str) -> str:
        """Schema -> checked GBNF, in a worker thread (big schemas take a while)."""

        def build() -> str:
            grammar = _json_grammar(schema, param)
            if not grammar_is_valid(self.model, grammar):
                raise RequestError(
                    "llama.cpp cannot use the grammar this schema makes (an empty enum?)", param=param
                )
            return grammar

        return await asyncio.to_thread(build)

    async def _prepare_chat(self, body: dict[str, Any]) -> _Prepared:
        options = parse_options(body, chat=True, n_vocab=self.model.n_vocab)
        if self.template is None:
            raise RequestError(
                f"{self.info.alias} has no chat template (it is a base model): use /v1/completions "
                "with a plain prompt instead.",
                param="messages",
                code="no_chat_template",
            )
        try:
            messages = normalize_messages(body.get("messages"))
            tools = _tools.validate_tools(body["tools"]) if body.get("tools") else []
            choice = _tools.resolve_tool_choice(body.get("tool_choice"), tools)
        except (ChatError, _tools.ToolError) as exc:
            raise RequestError(str(exc), param=getattr(exc, "param", None)) from exc
        if choice.mode == "none":
            render_tools: list[dict[str, Any]] | None = None
        else:
            render_tools = tools
        try:
            text = self.template.render(messages, tools=render_tools or None)
        except ChatError as exc:
            raise RequestError(str(exc), param="messages") from exc
        if choice.mode in ("required", "named"):
            forced = _tools.forced_call_schema(tools, choice.name if choice.mode == "named" else None)
            grammar: str | None = await self._grammar(forced, "tools")
        else:
            grammar = await self._format_grammar(options)
        tokens = await self._prepare_tokens(text, chat=True)
        return _Prepared(
            tokens, options, self._max_tokens(options, len(tokens)), grammar, tools,
            choice if choice.mode != "none" else None,
        )  # fmt: skip

    async def _prepare_completion(self, body: dict[str, Any]) -> _Prepared:
        options = parse_options(body, chat=False, n_vocab=self.model.n_vocab)
        text = prompt_text(body)
        grammar = await self._format_grammar(options)
        max_tokens = options.max_tokens if options.max_tokens is not None else 16  # OpenAI's default here
        tokens = await self._prepare_tokens(text, chat=False)
        options = replace(options, max_tokens=max_tokens)
        return _Prepared(tokens, options, self._max_tokens(options, len(tokens)), grammar, [], None)

    # ---- the app --------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI(title="mesh-llm model server", openapi_url=None, docs_url=None, redoc_url=None)

        api_errors.install(app, "model server", MODEL_SERVER_ROUTES)

        @app.get("/mesh/health")
        async def health() -> dict[str, Any]:
            return {"status": "ok", "model": self.info.alias}

        @app.get("/mesh/slots")
        async def slots() -> dict[str, Any]:
            return {
                "model": self.info.alias,
                "n_ctx_slot": self.engine.n_ctx_slot,
                **self.engine.stats().as_dict(),
            }

        for name, getter in self.info.extra.items():
            app.add_api_route(f"/mesh/{name}", _getter_route(getter), methods=["GET"])

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [self._card()]}

        @app.get("/v1/models/{model_id:path}")
        async def model(model_id: str) -> dict[str, Any]:
            if model_id.lower() != self.info.alias.lower():
                raise RequestError(
                    f"The model '{model_id}' does not exist",
                    param="model",
                    code="model_not_found",
                    status=404,
                )
            return self._card()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await self._body(request)
            prepared = await self._prepare_chat(body)
            return await self._respond(request, body, prepared, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await self._body(request)
            prepared = await self._prepare_completion(body)
            return await self._respond(request, body, prepared, chat=False)

        return app

    def _card(self) -> dict[str, Any]:
        return {
            "id": self.info.alias,
            "object": "model",
            "created": self.info.created,
            "owned_by": "mesh-llm",
            "context_length": self.engine.n_ctx_slot,
        }

    async def _respond(
        self, request: Request, body: dict[str, Any], prepared: _Prepared, *, chat: bool
    ) -> Response:
        model_name = self.info.alias
        jobs = await self._start(prepared)
        meta = _Meta(("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], int(time.time()), model_name)
        if prepared.options.stream:
            return StreamingResponse(
                self._stream(jobs, prepared, meta, chat=chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(_wait_disconnect(request))
        try:
            results = await _gather_or_disconnect([_collect(ch) for _, ch in jobs], watcher)
        finally:
            watcher.cancel()
            for job, _ in jobs:
                job.cancel()
            self.engine.wake()
        if results is None:  # the client left; nobody reads this
            return Response(status_code=499)
        errors = [f for _, f in results if f.reason is FinishReason.ERROR]
        if errors:
            raise RequestError(f"generation failed: {errors[0].error}", code="backend_error", status=503)
        return JSONResponse(self._whole(results, prepared, meta, chat=chat))

    # ---- non-streamed answers -----------------------------------------------------------------

    def _whole(
        self, results: list[tuple[list[Delta], Finished]], prepared: _Prepared, meta: _Meta, *, chat: bool
    ) -> dict[str, Any]:
        choices = []
        completion = 0
        for i, (deltas, fin) in enumerate(results):
            text = "".join(d.text for d in deltas)
            lps = [lp for d in deltas for lp in d.logprobs]
            completion += fin.completion_tokens
            reason = _reason(fin)
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                calls = self._calls(text, prepared)
                if calls is not None:
                    content, found = calls
                    message = {"role": "assistant", "content": content or None, "tool_calls": found}
                    reason = "tool_calls"
                choice: dict[str, Any] = {"index": i, "message": message, "finish_reason": reason}
                choice["logprobs"] = (
                    {"content": [_chat_logprob(lp) for lp in lps]}
                    if prepared.options.logprobs is not None
                    else None
                )
            else:
                choice = {"index": i, "text": text, "finish_reason": reason}
                choice["logprobs"] = (
                    _completion_logprobs(lps, 0) if prepared.options.logprobs is not None else None
                )
            choices.append(choice)
        first = results[0][1]
        return {
            "id": meta.id,
            "object": "chat.completion" if chat else "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": choices,
            "usage": _usage(first.prompt_tokens, first.cached_tokens, completion),
        }

    def _calls(self, text: str, prepared: _Prepared) -> tuple[str, list[dict[str, Any]]] | None:
        """Tool calls found in a finished answer, as OpenAI message fields; None if none."""
        if prepared.tool_choice is None:
            return None
        content, calls = _tools.parse_tool_calls(text, [t["function"]["name"] for t in prepared.tools])
        if not calls:
            return None
        return content, [_call_json(c) for c in calls]

    # ---- streamed answers ---------------------------------------------------------------------

    async def _stream(
        self, jobs: list[tuple[Job, _Channel]], prepared: _Prepared, meta: _Meta, *, chat: bool
    ) -> AsyncIterator[bytes]:
        merged: asyncio.Queue[tuple[int, Delta | Finished]] = asyncio.Queue()
        pumps = [asyncio.create_task(_pump(i, ch, merged)) for i, (_, ch) in enumerate(jobs)]
        states = [_ChoiceStream(i, prepared, chat) for i in range(len(jobs))]
        remaining = len(jobs)
        completion = 0
        first: Finished | None = None
        try:
            if chat:
                for st in states:
                    yield meta.chunk(chat, st.index, {"role": "assistant", "content": ""})
            while remaining:
                index, event = await merged.get()
                st = states[index]
                if isinstance(event, Delta):
                    for delta, lps in st.on_delta(event):
                        yield meta.chunk(chat, index, delta, logprobs=lps)
                    continue
                remaining -= 1
                completion += event.completion_tokens
                first = first or event
                if event.reason is FinishReason.ERROR:
                    yield _sse(
                        {
                            "error": {
                                "message": f"generation failed: {event.error}",
                                "type": "server_error",
                                "param": None,
                                "code": "backend_error",
                            }
                        }
                    )
                    yield b"data: [DONE]\n\n"
                    return
                for delta, lps in st.on_end(self):
                    yield meta.chunk(chat, index, delta, logprobs=lps)
                yield meta.chunk(chat, index, {} if chat else "", finish=st.finish_reason(event))
            if prepared.options.include_usage and first is not None:
                yield _sse({
                    "id": meta.id, "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": meta.created, "model": meta.model, "choices": [],
                    "usage": _usage(first.prompt_tokens, first.cached_tokens, completion),
                })  # fmt: skip
            yield b"data: [DONE]\n\n"
        finally:
            for job, _ in jobs:
                job.cancel()
            self.engine.wake()
            for p in pumps:
                p.cancel()


@dataclass(frozen=True)
class _Meta:
    id: str
    created: int
    model: str

    def chunk(
        self,
        chat: bool,
        index: int,
        delta: dict[str, Any] | str,
        *,
        finish: str | None = None,
        logprobs: Any = None,
    ) -> bytes:
        if chat:
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish,
            }
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish}
            obj = "text_completion"
        return _sse(
            {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}
        )


class _ChoiceStream:
    """One choice of a streamed answer: passes text through, or holds back a tool call."""

    def __init__(self, index: int, prepared: _Prepared, chat: bool) -> None:
        self.index = index
        self.prepared = prepared
        self.chat = chat
        self.watch_calls = chat and prepared.tool_choice is not None
        self.forced = (
            self.watch_calls
            and prepared.tool_choice is not None
            and prepared.tool_choice.mode in ("required", "named")
        )
        self.text = ""  # everything generated
        self.sent = 0  # characters of self.text already streamed as content
        self.held_lps: list[TokenLogprob] = []
        self.called = False
        self.offset = 0  # characters of completion text before the next logprobs entry

    def _wrap(self, text: str, lps: list[TokenLogprob]) -> tuple[dict[str, Any] | str, Any]:
        if self.chat:
            out_lps = (
                {"content": [_chat_logprob(lp) for lp in lps]}
                if self.prepared.options.logprobs is not None
                else None
            )
            return {"content": text}, out_lps
        out = None
        if self.prepared.options.logprobs is not None:
            out = _completion_logprobs(lps, self.offset)
            self.offset += sum(len(lp.token) for lp in lps)
        return text, out

    def on_delta(self, event: Delta) -> list[tuple[dict[str, Any] | str, Any]]:
        self.text += event.text
        if not self.watch_calls:
            return [self._wrap(event.text, list(event.logprobs))] if event.text or event.logprobs else []
        self.held_lps.extend(event.logprobs)
        if self.forced:
            return []
        # Stream content up to where a tool call could be starting; hold the rest.
        unsent = self.text[self.sent :]
        cut = _tools.content_before_call(unsent)
        if cut < 0 and _tools.may_become_tool_call(unsent):
            cut = 0
        if cut < 0:
            cut = len(unsent) - _tools.marker_tail(unsent, _tools.HOLD_MARKERS)
        if cut <= 0:
            return []
        piece = unsent[:cut]
        self.sent += cut
        lps, self.held_lps = self.held_lps, []
        return [self._wrap(piece, lps)]

    def on_end(self, app: ModelApp) -> list[tuple[dict[str, Any] | str, Any]]:
        if not self.watch_calls:
            return []
        rest = self.text[self.sent :]
        found = app._calls(rest, self.prepared)
        lps, self.held_lps = self.held_lps, []
        if found is None:
            return [self._wrap(rest, lps)] if rest or lps else []
        content, calls = found
        self.called = True
        out: list[tuple[dict[str, Any] | str, Any]] = []
        if content:
            out.append(self._wrap(content, lps))
        deltas = [{"index": k, **call} for k, call in enumerate(calls)]
        out.append(({"tool_calls": deltas}, None))
        return out

    def finish_reason(self, event: Finished) -> str:
        return "tool_calls" if self.called else _reason(event)


def _getter_route(getter: Callable[[], Any]) -> Callable[[], Any]:
    async def route() -> Any:
        return getter()

    return route


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _reason(fin: Finished) -> str:
    return "length" if fin.reason is FinishReason.LENGTH else "stop"


def _usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _call_json(call: _tools.ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _chat_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for t, v, b in lp.top],
    }


def _completion_logprobs(lps: list[TokenLogprob], start: int) -> dict[str, Any]:
    offsets = []
    for lp in lps:
        offsets.append(start)
        start += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{t: v for t, v, _ in lp.top} for lp in lps],
        "text_offset": offsets,
    }


async def _pump(index: int, channel: _Channel, out: asyncio.Queue[tuple[int, Delta | Finished]]) -> None:
    while True:
        event = await channel.queue.get()
        out.put_nowait((index, event))
        if isinstance(event, Finished):
            return


async def _collect(channel: _Channel) -> tuple[list[Delta], Finished]:
    deltas: list[Delta] = []
    while True:
        event = await channel.queue.get()
        if isinstance(event, Finished):
            return deltas, event
        deltas.append(event)


async def _wait_disconnect(request: Request) -> None:
    """Return when the client hangs up (the body has been read, so only disconnects remain)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _gather_or_disconnect(
    waits: list[Any], watcher: asyncio.Task[None]
) -> list[tuple[list[Delta], Finished]] | None:
    gathered = asyncio.ensure_future(asyncio.gather(*waits))
    done, _ = await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if gathered in done:
        return list(gathered.result())
    gathered.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gathered
    return None


__all__ = ["DEFAULT_MAX_BODY", "BackendError", "ModelApp", "ServerInfo"]
