"""Streamed answers: server-sent events, one choice at a time, tool calls held back.

Once a stream has started, a failure becomes one SSE error event followed by ``[DONE]``;
nothing is ever sent after ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from mesh_llm.serving.engine._answers import (
    Meta,
    chat_logprob,
    completion_logprobs,
    reason_text,
    sse_event,
    tool_calls,
    usage_json,
)
from mesh_llm.serving.engine._engine import Engine
from mesh_llm.serving.engine._jobs import Delta, Finished, FinishReason, Job, TokenLogprob
from mesh_llm.serving.engine._requests import Channel, Prepared
from mesh_llm.serving.engine._tool_formats import (
    HOLD_MARKERS,
    content_before_call,
    marker_tail,
    may_become_tool_call,
)


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
    """One choice of a streamed answer: passes text through, or holds back a tool call."""

    def __init__(self, index: int, prepared: Prepared, chat: bool) -> None:
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
                {"content": [chat_logprob(lp) for lp in lps]}
                if self.prepared.options.logprobs is not None
                else None
            )
            return {"content": text}, out_lps
        out = None
        if self.prepared.options.logprobs is not None:
            out = completion_logprobs(lps, self.offset)
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
        cut = content_before_call(unsent)
        if cut < 0 and may_become_tool_call(unsent):
            cut = 0
        if cut < 0:
            cut = len(unsent) - marker_tail(unsent, HOLD_MARKERS)
        if cut <= 0:
            return []
        piece = unsent[:cut]
        self.sent += cut
        lps, self.held_lps = self.held_lps, []
        return [self._wrap(piece, lps)]

    def on_end(self) -> list[tuple[dict[str, Any] | str, Any]]:
        if not self.watch_calls:
            return []
        rest = self.text[self.sent :]
        found = tool_calls(rest, self.prepared)
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
        return "tool_calls" if self.called else reason_text(event)


async def _pump(index: int, channel: Channel, out: asyncio.Queue[tuple[int, Delta | Finished]]) -> None:
    while True:
        event = await channel.queue.get()
        out.put_nowait((index, event))
        if isinstance(event, Finished):
            return
