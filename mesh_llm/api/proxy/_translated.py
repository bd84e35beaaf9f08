"""A relayed chat SSE answer turned into another API's events by its `StreamTranslator`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from mesh_llm import http_errors as api_errors
from mesh_llm.api.translate import StreamTranslator

KEEPALIVE = b": keep-alive\n\n"
"""What a chat stream gets every few seconds while no host has sent content yet: an SSE comment."""


async def translated_events(events: AsyncIterator[bytes], stream: StreamTranslator) -> AsyncIterator[bytes]:
    """A chat SSE answer (complete events, as `StreamRelay.events` yields them) in another API's events.

    An error event from the host, or the one the relay writes when the host breaks off, ends the
    translated stream through `fail`; nothing follows that or the end of the answer. A keep-alive
    (an SSE comment, `KEEPALIVE`) becomes the API's own.
    """
    async for data in events:
        for event in data.split(b"\n\n"):
            payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
            if not payload:
                if event.startswith(b":"):
                    yield stream.keepalive()
                continue
            if payload == b"[DONE]":
                for out in stream.end():
                    yield out
                return
            try:
                chunk = json.loads(payload)
            except (ValueError, RecursionError):
                continue  # the host wrote something that is no event: not the client's to see
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("error"), dict):
                for out in stream.fail(api_errors.error_of(chunk["error"], 502)):
                    yield out
                return
            for out in stream.feed(chunk):
                yield out
