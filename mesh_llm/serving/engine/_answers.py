"""Answers in OpenAI's shapes: whole (non-streamed) answers and the pieces streams share.

Chunks, usage, logprobs and tool calls are formatted here once for both kinds of answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from mesh_llm.serving.engine._jobs import Delta, Finished, FinishReason, TokenLogprob
from mesh_llm.serving.engine._requests import Channel, Prepared
from mesh_llm.serving.engine.dialects import Parser, collect_events, make_parser, tool_schemas


@dataclass(frozen=True)
class Meta:
    """The id, time and model name every chunk and answer of one response carries."""

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
        stop: str | None = None,
    ) -> bytes:
        if chat:
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish,
            }
            if stop is not None:
                choice["stop_reason"] = stop
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish}
            obj = "text_completion"
        return sse_event(
            {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}
        )


def whole_answer(
    results: list[tuple[list[Delta], Finished]], prepared: Prepared, meta: Meta, *, chat: bool
) -> dict[str, Any]:
    """The JSON body of a whole chat or text completion from its choices' deltas."""
    choices = []
    completion = 0
    for i, (deltas, fin) in enumerate(results):
        text = "".join(d.text for d in deltas)
        lps = [lp for d in deltas for lp in d.logprobs]
        completion += fin.completion_tokens
        reason = reason_text(fin)
        if chat:
            parser = answer_parser(prepared)
            parsed = collect_events([*parser.feed(text), *parser.finish()])
            message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if parsed.reasoning:
                message["reasoning_content"] = parsed.reasoning
            if parsed.calls:
                message["content"] = parsed.content or None
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in parsed.calls
                ]
                reason = "tool_calls"
            choice: dict[str, Any] = {"index": i, "message": message, "finish_reason": reason}
            if fin.stop is not None and reason == "stop":
                choice["stop_reason"] = fin.stop  # vLLM's extension: which stop string matched
            choice["logprobs"] = (
                {"content": [chat_logprob(lp) for lp in lps]}
                if prepared.options.logprobs is not None
                else None
            )
        else:
            choice = {"index": i, "text": text, "finish_reason": reason}
            choice["logprobs"] = (
                completion_logprobs(lps, 0) if prepared.options.logprobs is not None else None
            )
        choices.append(choice)
    first = results[0][1]
    return {
        "id": meta.id,
        "object": "chat.completion" if chat else "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage_json(first.prompt_tokens, first.cached_tokens, completion),
    }


def answer_parser(prepared: Prepared) -> Parser:
    """The parser of one chat answer: reasoning always, calls only when tools may be called."""
    schemas = tool_schemas(prepared.tools) if prepared.tool_choice is not None else {}
    return make_parser(prepared.dialect, schemas, in_reasoning=prepared.in_reasoning)


def sse_event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def reason_text(fin: Finished) -> str:
    return "length" if fin.reason is FinishReason.LENGTH else "stop"


def usage_json(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for t, v, b in lp.top],
    }


def completion_logprobs(lps: list[TokenLogprob], start: int) -> dict[str, Any]:
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


async def collect(channel: Channel) -> tuple[list[Delta], Finished]:
    """All of one job's deltas and its Finished event."""
    deltas: list[Delta] = []
    while True:
        event = await channel.queue.get()
        if isinstance(event, Finished):
            return deltas, event
        deltas.append(event)


async def wait_disconnect(request: Request) -> None:
    """Return when the client hangs up (the body has been read, so only disconnects remain)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def gather_or_disconnect(
    waits: list[Any], watcher: asyncio.Task[None]
) -> list[tuple[list[Delta], Finished]] | None:
    """The waits' results, or None (the waits cancelled) if the client hangs up first."""
    gathered = asyncio.ensure_future(asyncio.gather(*waits))
    done, _ = await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if gathered in done:
        return list(gathered.result())
    gathered.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gathered
    return None
