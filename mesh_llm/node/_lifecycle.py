"""The node: one asyncio runtime that wires models, backends, the API and the console together.

Startup and shutdown are explicit ordered phases (see `run`). The node owns the signals and
every child process it starts, and stops exactly those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from mesh_llm import __version__
from mesh_llm.api.console import console_policy, create_console_app, status_for_caller
from mesh_llm.api.control import control_router
from mesh_llm.api.guard import AccessPolicy, allowed_hosts, guarded
from mesh_llm.api.limits import limited_protocol
from mesh_llm.api.proxy import Proxy
from mesh_llm.config import HttpConfig, NodeConfig
from mesh_llm.discovery import Discovery
from mesh_llm.errors import ConfigError, MeshError
from mesh_llm.node._base import NodeResources
from mesh_llm.node._meshes import NodeMeshes
from mesh_llm.node._snapshot import NodeStatus
from mesh_llm.node._stop_watch import StopWatch, bounded_step, kill_children
from mesh_llm.supervise import all_logged, spawn_supervised

log = logging.getLogger(__name__)


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


class Node(NodeMeshes, NodeStatus):
    """A mesh-llm node. `await Node(config, load_resources(config)).run()` serves until stopped."""

    def __init__(
        self,
        config: NodeConfig,
        resources: NodeResources,
        *,
        on_ready: Callable[[Node], None] | None = None,
        stop_watch: StopWatch | None = None,
    ) -> None:
        super().__init__(config, resources)
        self._on_ready = on_ready
        self._http: list[tuple[_EmbeddedServer, asyncio.Task[None]]] = []  # console first, then API
        # The process's watchdog (the CLI's); without one, a stuck stop is only logged by step.
        self._stop_watch = stop_watch or StopWatch(None)

    def request_stop(self, sig: int | None = None) -> None:
        """Begin an orderly shutdown (the signal handlers call this).

        Ctrl-C (SIGINT) ends answers in progress at once; SIGTERM (and a call without a
        signal) lets them finish for up to `timing.stop_grace_s`. Either way a stream still running is
        ended with an SSE error event and ``[DONE]``. A second request exits at once.
        """
        if self._stop.is_set():
            log.warning("second stop request: exiting without waiting (children killed)")
            kill_children()
            os._exit(130)
        self._stop_watch.start()
        self._grace_s = 0.0 if sig == signal.SIGINT else self.config.timing.stop_grace_s
        name = signal.Signals(sig).name if sig is not None else "request"
        log.info(
            "stopping (%s)%s", name,
            "; press Ctrl-C again to exit at once" if sig == signal.SIGINT else "",
        )  # fmt: skip
        self._stop.set()

    async def _serve_http(self, app: Any, sock: socket.socket, graceful_s: int) -> _EmbeddedServer:
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
        self._http.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise MeshError("HTTP server stopped during startup")
            await asyncio.sleep(0.01)
        return server

    async def _start_http(self) -> None:
        if self.config.console is not None:
            sock = bind_tcp(self.config.console, "console")
            self.console_port = sock.getsockname()[1]
            app = create_console_app(
                self.status, self.feed, api_key=self.config.api_key, metrics=self.metrics_text
            )
            app.include_router(control_router(self.drop, self.split.preview, self.config.api_key))
            await self._serve_http(guarded(app, console_policy(self.config.api_key, self._hosts())), sock, 1)
        if not self.config.idle:
            sock = bind_tcp(self.config.api, "API")
            self.api_port = sock.getsockname()[1]
            self._proxy = Proxy(
                self,
                api_key=self.config.api_key,
                request_timeout_s=self.config.backend.request_timeout_s,
                max_body_bytes=self.config.backend.max_body_bytes,
                gauges=self.gauges,
                status=lambda request: status_for_caller(
                    self.status(), request.client.host if request.client else "", self.config.api_key
                ),
            )
            # The proxy checks the key itself (OpenAI-shaped 401s); the guard checks the Host.
            policy = AccessPolicy(None, self._hosts(), json_only=False, max_body=None)
            # uvicorn's own deadline comes after the proxy's drain (grace, then ending answers).
            await self._serve_http(
                guarded(self._proxy.app, policy), sock, graceful_s=int(self.config.timing.stop_grace_s) + 5
            )

    def _hosts(self) -> frozenset[str]:
        """Host names the API and console answer for (DNS rebinding defence)."""
        bound = [c.host for c in (self.config.api, self.config.console) if c is not None]
        return allowed_hosts(bound, self.config.allow_hosts)

    async def run(self) -> int:
        """Start in order, serve until a stop request, then shut down in order. Returns an exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        advertiser: asyncio.Task[None] | None = None
        discovering: asyncio.Task[None] | None = None
        try:
            await self._start_http()
            self.runtime.write(
                node_id=self.node_id, api_port=self.api_port, console_port=self.console_port,
                api_host=self.config.api.host,
            )  # fmt: skip
            if not self.config.idle and not self.config.discovery.finds:
                await self._start_mesh()  # with --auto / --mesh-name, discovery picks the mesh
            advertiser = spawn_supervised("advertise", self._advertise_loop)
            if self._on_ready is not None:
                self._on_ready(self)
            if self.config.discovery.active:
                # In the background: the API and console are already up and stay up.
                self.discovery = Discovery(self.config.discovery, self, self.config.state_dir, __version__)
                discovering = spawn_supervised("discovery", self.discovery.run)
            await self._start_models()
            await self._stop.wait()
        finally:
            self._stop_watch.start()  # also when the node stops by itself
            if discovering is not None:
                discovering.cancel()
                await self._step("discovery's last round", all_logged("discovery", [discovering], log))
            if self.discovery is not None:  # take the listing down before leaving the mesh
                await self._step("delisting the mesh", self.discovery.stop(), extra_s=self.discovery.stop_s)
            if advertiser is not None:
                advertiser.cancel()
            await self._shutdown()
            self.runtime.remove()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self._stop_watch.step = "exiting (asyncio's cleanup, the interpreter's exit)"
        return 1 if self.fatal is not None else 0

    async def _step(self, what: str, work: Coroutine[Any, Any, object], extra_s: float = 0.0) -> None:
        """One step of the stop, bounded by `timing.stop_step_s` (plus `extra_s`)."""
        self._stop_watch.step = what
        await bounded_step(what, work, self.config.timing.stop_step_s + extra_s)

    async def _advertise_loop(self) -> None:
        """Every second, or soon after a peer's record changes: merge demand, reconcile, advertise.

        Reacting to changes matters for splits: a worker starts as soon as it sees the host's
        plan, and the host loads as soon as it sees the workers ready, instead of up to a second
        later at each step.
        """
        timing = self.config.timing
        last_eval = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), timing.advertise_interval_s)
                await asyncio.sleep(timing.react_delay_s)
            self._poke.clear()
            if self.mesh is None:
                continue
            now = time.monotonic()
            peers = self.mesh.peers()
            for node_id, view in peers.items():
                self.demand.merge(node_id, view.record.demand, now, generation=view.record.incarnation)
            await self.split.reconcile()
            self.mesh.advertise(**self._record_fields())
            if self.role == "standby" and not self.stopping and now - last_eval >= timing.standby_eval_s:
                last_eval = now
                await self._maybe_pick_up_work(now)

    async def _shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish briefly, leave the mesh, stop children."""
        self.stopping = True
        self.feed.bump()
        for task in list(self._serving_tasks):
            task.cancel()
        api = self._http[1:] if self.config.console is not None else self._http
        for server, _ in api:
            server.should_exit = True  # no new connections; idle keep-alive ones close
        if self._proxy is not None:
            await self._step("answers in progress", self._drain(self._proxy), extra_s=self._grace_s)
        await self._step("the API server", all_logged("the API server", [t for _, t in api], log))
        await self._step("split models", self.split.stop())
        if self.mesh is not None:
            await self._step("leaving the mesh", self.mesh.stop())
        await self._step(
            "model servers", all_logged("model servers", [s.stop() for s in self.servers.values()], log)
        )
        if self._proxy is not None:
            await self._step("the proxy's connections", self._proxy.aclose())
        self.feed.close()
        for server, _ in self._http:
            server.should_exit = True
        await self._step("the console", all_logged("the console", [t for _, t in self._http], log))

    async def _drain(self, proxy: Proxy) -> None:
        cut = await proxy.drain(self._grace_s)
        if cut:
            log.info("ended %d answer(s) in progress: this node is stopping", cut)
