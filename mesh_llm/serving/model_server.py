"""Supervised model-server subprocesses: start, health-check, restart with backoff, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from mesh_llm.config import BackendConfig
from mesh_llm.errors import ConfigError, MeshError
from mesh_llm.models.draft import choose_draft
from mesh_llm.models.kv import context_warning, training_context
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.planning.offload import solo_offload
from mesh_llm.serving.local_socket import PrivateSocket, socket_stem
from mesh_llm.serving.process import Exited, SupervisedChild, TimedOut
from mesh_llm.serving.rpc.cache import gguf_header
from mesh_llm.settings import model_server_args

log = logging.getLogger(__name__)

SLOTS_POLL_S = 0.5
STABLE_AFTER_S = 60.0  # a server up this long before crashing restarts with the shortest backoff
BASE_URL = "http://localhost"  # over the Unix socket; `localhost` passes the child's Host check


EXIT_BAD_DRAFT = 5  # the model server's exit code for a draft that cannot draft for the model


class BackendState(Enum):
    STARTING = "starting"  # process launched, model loading
    READY = "ready"  # answering health checks: requests may be routed here
    RESTARTING = "restarting"  # crashed or unhealthy, waiting out the backoff
    STOPPED = "stopped"


@dataclass(frozen=True)
class BackendStatus:
    """A snapshot of one supervised model server, for status views."""

    model: str
    state: BackendState
    socket: str  # the Unix socket the model server listens on
    pid: int | None
    restarts: int
    since: float
    message: str = ""


def gpu_server_values(
    config: BackendConfig, gpus: Sequence[tuple[str, int]], *, split: bool
) -> dict[str, Any]:
    """Pure: the model-server settings for GPUs and KV cache types; none at all on the CPU path."""
    values: dict[str, Any] = {"cache_type_k": config.cache_type_k, "cache_type_v": config.cache_type_v}
    plan = None if split else solo_offload(gpus)
    if plan is not None:
        values.update(gpu_devices=",".join(plan.devices), n_gpu_layers=plan.n_gpu_layers)
        if plan.tensor_split:
            values["tensor_split"] = ",".join(f"{s:g}" for s in plan.tensor_split)
        if config.n_ctx_auto:
            values.update(auto_ctx=True, gpu_budget=config.gpu_budget_bytes)
    elif split and gpus:
        # The host's own layers, divided by free memory, and a draft (on the first GPU).
        values["gpu_devices"] = ",".join(name for name, _ in gpus)
    return values


def gpu_server_args(config: BackendConfig, gpus: Sequence[tuple[str, int]], *, split: bool) -> list[str]:
    """Pure: `gpu_server_values` as the model server's command-line words."""
    return model_server_args(gpu_server_values(config, gpus, split=split))


class ModelServer:
    """One model served by a llama-cpp-python subprocess on a Unix socket only this user can open.

    The node owns the listening socket (see serving/local_socket.py: `config.socket_dir`, made
    mode 0700, or a private temporary directory), so its path survives restarts; no TCP port is
    open, and every client (the proxy, the mesh tunnel, health checks) connects to the socket
    with `Host: localhost`. `stop` removes the socket file. The child runs in its
    own process group (Ctrl-C in the terminal does not reach it directly; the node stops it in
    order) and asks the kernel to end it if the node dies.
    """

    def __init__(
        self,
        model: ResolvedModel,
        config: BackendConfig,
        log_dir: Path,
        on_change: Callable[[], None] = lambda: None,
        *,
        rpc_endpoints: Sequence[str] = (),
        layer_split: Sequence[int] = (),
        output_on_host: bool = True,
        gpus: Sequence[tuple[str, int]] = (),
    ) -> None:
        """``gpus`` holds ``(ggml name, free bytes)`` of this node's chosen GPUs: a solo model goes
        wholly on them, divided by free memory (see planning/offload.py); none: the CPU.

        ``rpc_endpoints`` and ``layer_split`` make this a split host: ``layer_split`` holds the
        host's layer count, then one per endpoint in the same order (see planning.placement.offload_settings).
        The child exits when a worker's connection closes; like any crash that is reported in
        the status message and retried with backoff, so the owner should re-plan and stop it.
        """
        if bool(rpc_endpoints) != bool(layer_split) or (
            rpc_endpoints and len(layer_split) != len(rpc_endpoints) + 1
        ):
            raise ConfigError(
                f"layer split {tuple(layer_split)} needs one count for the host and one per RPC endpoint "
                f"({len(rpc_endpoints)})"
            )
        self.rpc_endpoints = tuple(rpc_endpoints)
        self.layer_split = tuple(int(c) for c in layer_split)
        self.output_on_host = output_on_host
        self.gpus = tuple(gpus)
        self.model = model
        self._config = config
        self._child = SupervisedChild(
            f"model server {model.name}",
            log_dir / f"{model.name}.log",
            BackendState.STOPPED,
            stop_timeout_s=config.stop_timeout_s,
            on_change=on_change,
            logger=log,
        )
        self._listener = PrivateSocket(config.socket_dir, socket_stem(model.name))
        self.socket_path: Path = self._listener.path
        # The proxy's connections to this server (a pool of its own; closed by `stop`).
        self.transport = httpx.AsyncHTTPTransport(
            uds=str(self.socket_path),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0
        self._stopping = False
        self._ready_at: float | None = None
        self._spawned_at: float | None = None
        self.load_s: float | None = None  # seconds the last start took from launch to ready
        self.slots: dict[str, Any] | None = None  # the engine's last /mesh/slots answer
        self.draft: str | None = None  # what the model server drafts with (see models/draft.py)
        self.draft_error = ""
        try:
            self.draft = choose_draft(model, config.draft)
        except MeshError as exc:  # an explicit --draft that went missing since start-up
            self.draft_error = str(exc)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def base_url(self) -> str:
        """The URL to send with `transport` (or `client`): the host part is only the Host header."""
        return BASE_URL

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new HTTP client to this model server (over its socket); the caller closes it."""
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path)), base_url=BASE_URL, **kwargs
        )

    @property
    def ready(self) -> bool:
        return self._child.state is BackendState.READY

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def status(self) -> BackendStatus:
        c = self._child
        return BackendStatus(
            self.name, c.state, str(self.socket_path), c.pid, self.restarts, c.since, c.message
        )

    async def start(self) -> None:
        """Launch the supervisor; returns at once (watch `ready` or the on_change callback)."""
        if not self._config.n_ctx_auto or self.rpc_endpoints:  # a fixed context: say if it overreaches
            warning = await asyncio.to_thread(self._context_warning)
            if warning:
                log.warning("%s", warning)
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the server answers health checks; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready:
                return True
            await asyncio.sleep(0.05)
        return self.ready

    async def placement(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """Where llama.cpp put each layer of a split model (checked against the split at load);
        None for a solo model or a server that is not ready."""
        if not self.rpc_endpoints or not self.ready:
            return None
        try:
            async with self.client() as client:
                r = await client.get("/mesh/placement", timeout=timeout)
            return dict(r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def stop(self) -> None:
        """Stop the supervisor and the child's whole process group; idempotent."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._kill_child()
        await self.transport.aclose()
        self._listener.close()
        self._child.set_state(BackendState.STOPPED, "stopped")

    def _context_warning(self) -> str | None:
        try:
            meta, _ = gguf_header(self.model.path)
        except (MeshError, OSError):
            return None  # the model server reports an unreadable file itself
        return context_warning(self.name, self._config.n_ctx, training_context(meta))

    def _command(self) -> list[str]:
        config = self._config
        values: dict[str, Any] = {
            "fd": self._listener.fileno(),
            "model": str(self.model.path),
            "alias": self.name,
            "n_ctx": config.n_ctx,
            "parallel": config.n_parallel,
            "max_queue": config.max_queue,
            "max_body": config.max_body_bytes,
            "parent_pid": os.getpid(),
            "n_threads": config.n_threads or None,
            "rpc": self.rpc_endpoints,
            "cache_ram": config.cache_ram_bytes or None,
            "cache_disk": config.cache_disk_bytes or None,
            "cache_dir": str(config.cache_dir) if config.cache_dir and config.cache_disk_bytes else None,
            **gpu_server_values(config, self.gpus, split=bool(self.rpc_endpoints)),
        }
        if config.n_ctx_auto and not self.gpus and not self.rpc_endpoints:
            # The CPU path sizes its context by the same rule as GPUs (planning/offload.auto_ctx).
            values.update(auto_ctx=True, gpu_budget=config.gpu_budget_bytes)
        if self.draft is not None:
            values.update(draft=self.draft, draft_max=config.draft_max)
        if self.layer_split:
            values["layer_split"] = ",".join(map(str, self.layer_split))
            values["output_on"] = "host" if self.output_on_host else "last"
        return [sys.executable, "-m", "mesh_llm.serving.model_server_main", *model_server_args(values)]

    async def _healthy(self, client: httpx.AsyncClient) -> bool:
        """One health check; it also refreshes the slot figures shown in status and gossip."""
        try:
            r = await client.get("/mesh/slots", timeout=self._config.health_timeout_s)
            if r.status_code != 200:
                return False
            body = r.json()
            self.slots = body if isinstance(body, dict) else None
            return True
        except (httpx.HTTPError, ValueError):
            return False

    @property
    def free_slots(self) -> int | None:
        """Slots free at the last check, or None before the first."""
        if self.slots is None or not self.ready:
            return None
        return int(self.slots.get("slots_free", 0))

    async def _supervise(self) -> None:
        failures = 0
        async with self.client() as client:
            while not self._stopping:
                self._child.set_state(BackendState.STARTING, "loading model")
                self._ready_at = None
                self._spawned_at = time.monotonic()
                await self._child.spawn(self._command(), pass_fds=(self._listener.fileno(),))
                reason = await self._run_once(client)
                await self._kill_child()
                if self._stopping:
                    return
                self.restarts += 1
                if self._ready_at is not None and time.monotonic() - self._ready_at > STABLE_AFTER_S:
                    failures = 0  # it ran fine for a while: this crash starts a new backoff series
                delay = self._config.restart_backoff_s[min(failures, len(self._config.restart_backoff_s) - 1)]
                failures += 1
                self._child.set_state(BackendState.RESTARTING, f"{reason}; restarting in {delay:g} s")
                await asyncio.sleep(delay)

    async def _run_once(self, client: httpx.AsyncClient) -> str:
        """Run one child until it exits or fails its health checks; return why it ended."""
        child = self._child

        async def healthy() -> bool:
            return await self._healthy(client)

        outcome = await child.wait_ready(healthy, self._config.startup_timeout_s, 0.1)
        if isinstance(outcome, Exited):
            if outcome.code == EXIT_BAD_DRAFT and self.draft is not None:
                # The draft cannot draft for this model: serve without it, and say why.
                self.draft_error = child.log_tail()
                log.warning("model server %s: draft refused: %s", self.name, self.draft_error)
                self.draft = None
                return "its draft was refused; starting without it"
            return f"exited with code {outcome.code} while loading ({child.log_tail()})"
        if isinstance(outcome, TimedOut):
            return f"did not become healthy within {outcome.after_s:g} s"
        self._ready_at = time.monotonic()
        if self._spawned_at is not None:
            self.load_s = self._ready_at - self._spawned_at
        child.set_state(BackendState.READY, "")
        misses = 0
        # Checks every half second keep the slot figures fresh; the miss budget stays in time.
        interval = min(self._config.health_interval_s, SLOTS_POLL_S)
        allowed_misses = max(3, round(3 * self._config.health_interval_s / interval))
        while True:
            code = await child.wait_exit(interval)
            if code is not None:
                if self.rpc_endpoints:  # say which worker went away
                    return f"exited with code {code} ({child.log_tail(1)})"
                return f"exited with code {code}"
            misses = 0 if await self._healthy(client) else misses + 1
            if misses >= allowed_misses:
                return "stopped answering health checks"

    async def _kill_child(self) -> None:
        self.slots = None
        await self._child.stop()
