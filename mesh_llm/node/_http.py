"""The node's embedded HTTP servers (the console and the API), started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from mesh_llm.api.limits import limited_protocol
from mesh_llm.config import HttpConfig
from mesh_llm.errors import ConfigError, MeshError


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the node."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_tcp(http: HttpConfig, what: str) -> socket.socket:
    """Bind a listening socket up front so a busy port is a clear error, not a uvicorn exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY; without it a response's header and body writes
    # meet delayed ACKs and each request waits about 40 ms on loopback.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((http.host, http.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {http.host}:{http.port} for the {what} ({exc.strerror}); "
            f"is another mesh-llm running? Pick another port with --{'port' if what == 'API' else 'console'}."
        ) from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class HttpServers:
    """Owns the node's uvicorn servers, in the order they started (the console first)."""

    def __init__(self) -> None:
        self.started: list[tuple[_EmbeddedServer, asyncio.Task[None]]] = []

    async def serve(self, app: Any, sock: socket.socket, graceful_s: int) -> None:
        """Serve `app` on `sock`; returns once it accepts connections."""
        # No WebSockets: nothing here speaks them, and an upgraded connection would leave the
        # per-client connection count and the guard behind.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=graceful_s, access_log=False,
            ws="none",
        )  # fmt: skip
        config.load()
        config.http_protocol_class = limited_protocol(config.http_protocol_class)
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self.started.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise MeshError("HTTP server stopped during startup")
            await asyncio.sleep(0.01)

    def close(self, servers: list[tuple[_EmbeddedServer, asyncio.Task[None]]]) -> list[asyncio.Task[None]]:
        """Stop `servers` accepting (idle keep-alive connections close); their tasks, to wait on."""
        for server, _ in servers:
            server.should_exit = True
        return [task for _, task in servers]
