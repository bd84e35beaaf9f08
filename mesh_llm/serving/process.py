"""SupervisedChild: one child process of the node (a model server, an RPC worker).

It owns what every such child needs, once: spawning in its own process group with output
appended to a log file, waiting until a readiness check passes (or the child exits, or time
runs out), watching for an exit nobody asked for, the log's last lines for status messages, a
state with one logged transition, and stopping exactly its own process group. What "ready"
means, which states there are and what happens after a crash stay with the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Generic, TypeVar

from mesh_llm.supervise import spawn_logged

log = logging.getLogger(__name__)

__all__ = ["Exited", "SupervisedChild", "TimedOut", "log_tail", "stop_group"]

S = TypeVar("S", bound=Enum)


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a child's log, joined on one line, for status messages."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


async def stop_group(proc: asyncio.subprocess.Process | None, timeout_s: float) -> None:
    """SIGTERM the child's own process group, then SIGKILL it if it outlives `timeout_s`.

    Children are started with start_new_session=True, so the group is exactly what we started.
    """
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@dataclass(frozen=True)
class Exited:
    """The child exited before its readiness check passed."""

    code: int


@dataclass(frozen=True)
class TimedOut:
    """The child was still running but not ready when the startup timeout ran out."""

    after_s: float


class SupervisedChild(Generic[S]):
    """One child process in its own process group, with its log file and a logged state.

    ``label`` prefixes every logged transition (``"model server qwen"`` logs
    ``model server qwen: starting -> ready``) on ``logger``, the owner's. ``on_change`` is
    called after each transition.
    """

    def __init__(
        self,
        label: str,
        log_path: Path,
        state: S,
        *,
        stop_timeout_s: float,
        on_change: Callable[[], None] = lambda: None,
        logger: logging.Logger = log,
    ) -> None:
        self.label = label
        self._log = logger
        self.log_path = log_path
        self._stop_timeout_s = stop_timeout_s
        self._on_change = on_change
        self._state = state
        self._message = ""
        self._since = time.time()
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def state(self) -> S:
        return self._state

    @property
    def message(self) -> str:
        return self._message

    @property
    def since(self) -> float:
        return self._since

    @property
    def pid(self) -> int | None:
        """The running child's pid; None before the first spawn and once it has exited."""
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    def set_state(self, state: S, message: str = "") -> None:
        """The one transition: logs ``old -> new message`` and calls on_change, if anything changed."""
        if state is not self._state or message != self._message:
            self._log.info("%s: %s -> %s %s", self.label, self._state.value, state.value, message)
            self._state = state
            self._message = message
            self._since = time.time()
            self._on_change()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the child's log, on one line."""
        return log_tail(self.log_path, lines)

    async def spawn(self, cmd: Sequence[str], *, pass_fds: Sequence[int] = ()) -> asyncio.subprocess.Process:
        """Start ``cmd`` in a new session (its own process group), output appended to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
            )
        finally:
            logf.close()
        return self.proc

    async def wait_ready(
        self, ready: Callable[[], Awaitable[bool]], timeout_s: float, poll_s: float
    ) -> Exited | TimedOut | None:
        """Run ``ready()`` until it passes (None), the child exits, or ``timeout_s`` runs out.

        Between checks it waits up to ``poll_s`` for the child to exit, so an exit is seen at once.
        """
        proc = self.proc
        assert proc is not None, "spawn first"
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.returncode is not None:
                return Exited(proc.returncode)
            if await ready():
                return None
            if proc.returncode is not None:
                return Exited(proc.returncode)
            if time.monotonic() > deadline:
                return TimedOut(timeout_s)
            await self.wait_exit(poll_s)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The child's exit code once it has exited, waiting up to ``timeout_s``; None if it runs on."""
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout_s)
        return proc.returncode

    def watch_exit(self, on_exit: Callable[[int], None]) -> None:
        """Call ``on_exit(code)`` when the child exits by itself (not when stopped with stop())."""
        proc = self.proc
        assert proc is not None, "spawn first"

        async def watch() -> None:
            on_exit(await proc.wait())

        self._watch = spawn_logged(watch(), f"watch-{self.label}")

    async def stop(self) -> None:
        """Stop watching, then SIGTERM (later SIGKILL) the child's process group; idempotent."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await stop_group(self.proc, self._stop_timeout_s)


def die_with_parent(parent_pid: int) -> None:
    """In the child: ask Linux to SIGTERM it when the node dies, even by kill -9, so no child
    outlives its node."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        return  # not Linux: the node's own shutdown still stops us
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)
