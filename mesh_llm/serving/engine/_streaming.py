"""Streamed answers: server-sent events, one choice at a time; chat answers go through the
model's dialect parser, so reasoning and tool calls stream as their own deltas.

Once a stream has started, a failure becomes one SSE error event followed by ``[DONE]``;
nothing is ever sent after ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from mesh_llm.serving.engine._answers import (
    Meta,
    answer_parser,
    chat_logprob,
    completion_logprobs,
    reason_text,
    sse_event,
    usage_json,
)
from mesh_llm.serving.engine._engine import Engine
from mesh_llm.serving.engine._jobs import Delta, Finished, FinishReason, Job, TokenLogprob
from mesh_llm.serving.engine._requests import Channel, Prepared
from mesh_llm.serving.engine.dialects import CallArgs, CallStart, Content, Event, Reasoning


async def stream_answer(
    engine: Engine, jobs: list[tuple[Job, Channel]], prepared: Prepared, meta: Meta, *, chat: bool
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed answer; cancels its jobs when done or abandoned."""
    merged: asyncio.Queue[tuple[int, Delta | Finished]] = asyncio.Queue()
    pumps = [asyncio.create_task(_pump(i, ch, merged)) for i, (_, ch) in enumerate(jobs)]
    states = [ChoiceStream(i, prepared, chat) for i in range(len(jobs))]
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
                yield sse_event(
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
            for delta, lps in st.on_end():
                yield meta.chunk(chat, index, delta, logprobs=lps)
            reason = st.finish_reason(event)
            stop = event.stop if reason == "stop" else None
            yield meta.chunk(chat, index, {} if chat else "", finish=reason, stop=stop)
        if prepared.options.include_usage and first is not None:
            yield sse_event({
                "id": meta.id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": meta.created, "model": meta.model, "choices": [],
                "usage": usage_json(first.prompt_tokens, first.cached_tokens, completion),
            })  # fmt: skip
        yield b"data: [DONE]\n\n"
    finally:
        for job, _ in jobs:
            job.cancel()
        engine.wake()
        for p in pumps:
            p.cancel()


class ChoiceStream:
    """One choice of a streamed answer: plain text for completions; for chat, the dialect parser's
    events as OpenAI deltas (content, reasoning_content, tool_calls)."""

    def __init__(self, index: int, prepared: Prepared, chat: bool) -> None:
        self.index = index
        self.prepared = prepared
        self.chat = chat
        self.parser = answer_parser(prepared) if chat else None
        self.held_lps: list[TokenLogprob] = []  # logprobs of text the parser holds back
        self.offset = 0  # characters of completion text before the next logprobs entry

    def _completion(self, text: str, lps: list[TokenLogprob]) -> tuple[dict[str, Any] | str, Any]:
        out = None
        if self.prepared.options.logprobs is not None:
            out = completion_logprobs(lps, self.offset)
            self.offset += sum(len(lp.token) for lp in lps)
        return text, out

    def _chat_deltas(self, events: list[Event], end: bool) -> list[tuple[dict[str, Any] | str, Any]]:
        out: list[tuple[dict[str, Any] | str, Any]] = []
        for ev in events:
            delta = _delta(ev)
            if out and _mergeable(out[-1][0], delta):
                out[-1] = ({k: out[-1][0][k] + v for k, v in delta.items()}, None)  # type: ignore[index]
            else:
                out.append((delta, None))
        if self.prepared.options.logprobs is None:
            return out
        if not out and self.held_lps and end:
            out.append(({"content": ""}, None))
        if out and self.held_lps:
            # The logprobs of held-back text go out with the first delta sent after it.
            lps, self.held_lps = self.held_lps, []
            out[0] = (out[0][0], {"content": [chat_logprob(lp) for lp in lps]})
        return out

    def on_delta(self, event: Delta) -> list[tuple[dict[str, Any] | str, Any]]:
        if self.parser is None:
            return (
                [self._completion(event.text, list(event.logprobs))] if event.text or event.logprobs else []
            )
        self.held_lps.extend(event.logprobs)
        return self._chat_deltas(self.parser.feed(event.text) if event.text else [], end=False)

    def on_end(self) -> list[tuple[dict[str, Any] | str, Any]]:
        if self.parser is None:
            return []
        return self._chat_deltas(self.parser.finish(), end=True)

    def finish_reason(self, event: Finished) -> str:
        return "tool_calls" if self.parser is not None and self.parser.called else reason_text(event)


def _delta(ev: Event) -> dict[str, Any]:
    """One parser event as an OpenAI chat delta."""
    if isinstance(ev, Content):
        return {"content": ev.text}
    if isinstance(ev, Reasoning):
        return {"reasoning_content": ev.text}
    if isinstance(ev, CallStart):
        call = {
            "index": ev.index,
            "id": ev.id,
            "type": "function",
            "function": {"name": ev.name, "arguments": ""},
        }
        return {"tool_calls": [call]}
    if isinstance(ev, CallArgs):
        return {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]}
    return {}  # CallEnd: the next call's start or the finish reason says it


def _mergeable(a: dict[str, Any] | str, b: dict[str, Any]) -> bool:
    """Consecutive content (or reasoning) pieces go out as one delta."""
    return (
        isinstance(a, dict)
        and len(a) == 1
        and a.keys() == b.keys()
        and ("content" in a or "reasoning_content" in a)
    )


async def _pump(index: int, channel: Channel, out: asyncio.Queue[tuple[int, Delta | Finished]]) -> None:
    while True:
        event = await channel.queue.get()
        out.put_nowait((index, event))
        if isinstance(event, Finished):
            return
