"""RpcWorker: one supervised ggml RPC-server subprocess (``python -m mesh_llm.serving.rpc.worker_main``).

Started in its own process group, ready once it answers HELLO, reported FAILED when it exits
on its own, stopped with its whole group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from mesh_llm.errors import BackendUnavailable
from mesh_llm.serving.process import Exited, SupervisedChild
from mesh_llm.serving.rpc.probe import probe_rpc_server

log = logging.getLogger(__name__)

__all__ = ["RpcWorker", "RpcWorkerState", "RpcWorkerStatus"]


class RpcWorkerState(Enum):
    STARTING = "starting"  # launched, not yet answering HELLO
    READY = "ready"  # answering HELLO: a host may connect
    FAILED = "failed"  # exited or never became ready; see the message
    STOPPED = "stopped"


@dataclass(frozen=True)
class RpcWorkerStatus:
    """A snapshot of one RPC worker, for status views."""

    state: RpcWorkerState
    endpoint: str
    pid: int | None
    since: float
    message: str = ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RpcWorker:
    """One ggml RPC server subprocess bound to 127.0.0.1, in its own process group.

    It does not restart by itself: a host's model state on a worker dies with the worker, so
    whoever placed the model decides what happens next (re-plan, or ``start()`` again). A crash
    sets the state to FAILED and calls ``on_change``. Liveness while serving is the process
    itself: the worker answers one client at a time, so a HELLO probe would queue behind the
    host's connection (the host side watches that connection; see host_split.watch_rpc_connections).
    """

    def __init__(
        self,
        port: int = 0,
        cache_dir: Path | None = None,
        log_dir: Path | None = None,
        *,
        name: str = "rpc-worker",
        n_threads: int | None = None,
        device: str = "auto",
        on_change: Callable[[], None] = lambda: None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.name = name
        self._fixed_port = port
        self.port = port
        self.cache_dir = cache_dir
        self._n_threads = n_threads or os.cpu_count() or 1
        self._device = device
        self._startup_timeout_s = startup_timeout_s
        self._child = SupervisedChild(
            f"rpc worker {name}",
            (log_dir or Path.cwd()) / f"{name}.log",
            RpcWorkerState.STOPPED,
            stop_timeout_s=stop_timeout_s,
            on_change=on_change,
            logger=log,
        )

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def state(self) -> RpcWorkerState:
        return self._child.state

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def status(self) -> RpcWorkerStatus:
        c = self._child
        return RpcWorkerStatus(c.state, self.endpoint, c.pid, c.since, c.message)

    async def start(self) -> None:
        """Launch the worker and return once it answers HELLO; BackendError if it cannot."""
        if self.pid is not None:
            return
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3  # a port we picked may be taken in between: pick again
        for attempt in range(attempts):
            self.port = self._fixed_port or _free_port()
            self._child.set_state(RpcWorkerState.STARTING, f"starting on {self.endpoint}")
            await self._child.spawn(self._command())
            outcome = await self._child.wait_ready(self._answers_hello, self._startup_timeout_s, 0.05)
            if outcome is None:
                self._child.set_state(RpcWorkerState.READY, "")
                self._child.watch_exit(self._exited)
                return
            await self._child.stop()
            if attempt == attempts - 1:
                if isinstance(outcome, Exited):
                    reason = f"exited with code {outcome.code} while starting ({self._child.log_tail()})"
                else:
                    reason = f"did not answer on {self.endpoint} within {outcome.after_s:g} s"
                self._child.set_state(RpcWorkerState.FAILED, reason)
                raise BackendUnavailable(f"RPC worker {self.name}: {reason}")

    async def stop(self) -> None:
        """Stop the worker's whole process group; idempotent."""
        await self._child.stop()
        self._child.set_state(RpcWorkerState.STOPPED, "stopped")

    def _command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "mesh_llm.serving.rpc.worker_main",
            "--port", str(self.port), "--threads", str(self._n_threads), "--device", self._device,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        if self.cache_dir is not None:
            cmd += ["--cache-dir", str(self.cache_dir)]
        return cmd

    async def _answers_hello(self) -> bool:
        try:
            await asyncio.to_thread(probe_rpc_server, self.endpoint, 1.0)
            return True
        except BackendUnavailable:
            return False

    def _exited(self, code: int) -> None:
        self._child.set_state(RpcWorkerState.FAILED, f"exited with code {code} ({self._child.log_tail()})")
