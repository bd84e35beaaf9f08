"""The console on :3131: status JSON, a live SSE feed of it, and the static UI from console/."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

KEEPALIVE_S = 15.0


class ChangeFeed:
    """A version counter that status readers wait on; bumped whenever the node's state changes."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def bump(self) -> None:
        """Record a change; safe to call from sync code on the event loop thread."""
        self.version += 1
        cond = self._condition()

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        try:
            asyncio.get_running_loop().create_task(notify())
        except RuntimeError:
            pass  # no loop yet: readers will see the new version when they start

    def close(self) -> None:
        self.closed = True
        self.bump()

    async def wait(self, seen: int, timeout: float) -> int:
        """Wait until the version differs from `seen` (or timeout); return the current version."""
        cond = self._condition()
        async with cond:
            if self.version == seen and not self.closed:
                try:
                    await asyncio.wait_for(cond.wait(), timeout)
                except TimeoutError:
                    pass
        return self.version


def assets_dir() -> Path:
    """The console's static files: packaged copy first, then the repo's console/ folder."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_console", here.parent / "console"):
        if (candidate / "index.html").is_file():
            return candidate
    return here.parent / "console"


def create_console_app(status: Callable[[], dict[str, Any]], feed: ChangeFeed) -> FastAPI:
    """Build the console app around a status source and its change feed."""
    app = FastAPI(title="mesh-llm console", openapi_url=None, docs_url=None, redoc_url=None)
    static = assets_dir()

    @app.get("/api/status")
    async def get_status() -> JSONResponse:
        return JSONResponse(status())

    @app.get("/api/events")
    async def events() -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            seen = feed.version
            yield f"event: status\ndata: {json.dumps(status())}\n\n".encode()
            while not feed.closed:
                current = await feed.wait(seen, KEEPALIVE_S)
                if feed.closed:
                    break
                if current == seen:
                    yield b": keep-alive\n\n"
                    continue
                seen = current
                yield f"event: status\ndata: {json.dumps(status())}\n\n".encode()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(static / "index.html")

    if static.is_dir():
        app.mount("/static", StaticFiles(directory=static), name="static")
    return app
