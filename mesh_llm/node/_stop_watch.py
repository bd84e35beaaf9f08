"""Bounds on the node's stop: each step gets a time limit, and the whole stop a deadline.

An orderly stop waits on libraries (relays, mDNS, uvicorn, children). A step that overruns its
limit is logged with the place it waits in and left behind, so the steps after it (leaving the
mesh, stopping children) still run. If the process is still alive at the deadline anyway (a
call that blocks the event loop, a task that ignores cancellation), a watchdog thread writes
every thread's stack to the log, kills the children this process started and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any

import psutil

log = logging.getLogger("mesh_llm.node")

EXIT_STUCK = 3  # the exit code of a stop the watchdog had to end


def task_stack(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits, as a traceback."""
    out = io.StringIO()
    task.print_stack(limit=30, file=out)
    return out.getvalue().rstrip()


async def bounded_step(what: str, work: Coroutine[Any, Any, object], limit_s: float) -> bool:
    """Wait up to `limit_s` for one step of the stop; True if it finished (or failed) in time.

    A step that overruns is logged with where it waits, cancelled and not waited for again.
    """
    task = asyncio.create_task(work, name=f"stop: {what}")
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    if not done:
        log.warning(
            "stopping: %s did not finish within %.0f s; going on without it. It waits in:\n%s",
            what, limit_s, task_stack(task),
        )  # fmt: skip
        task.cancel()
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("stopping: %s failed: %s", what, exc, exc_info=exc)
    return True


def kill_children() -> int:
    """SIGKILL every child process this process started, each with its process group; how many.

    The node starts each child in a session of its own (`SupervisedChild`), so a child whose
    group is its own pid takes exactly its group with it; only direct children are touched.
    """
    killed = 0
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if not child.is_running():  # reaped since (is_running also notices a reused pid)
                continue
            if os.getpgid(child.pid) == child.pid:
                os.killpg(child.pid, signal.SIGKILL)
            else:
                child.kill()
            killed += 1
    return killed


class StopWatch:
    """Started when a stop begins; ends the process if it has not exited `deadline_s` later.

    The CLI makes one per process and never cancels it: it also covers asyncio.run's cleanup
    and the interpreter's exit (a worker thread that never returns). With `deadline_s` None it
    only names the step under way (a node run inside another program must not end it).
    """

    def __init__(self, deadline_s: float | None) -> None:
        self.deadline_s = deadline_s
        self.step = "starting to stop"  # the step under way, for the last message
        self._timer: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Arm the watchdog (once; later calls do nothing)."""
        if self._timer is not None or self.deadline_s is None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: no task stacks, threads still
            self._loop = asyncio.get_running_loop()
        # The backstop should this thread itself never get to run (the GIL held by a C call):
        # faulthandler's own C thread writes the stacks and exits.
        faulthandler.dump_traceback_later(self.deadline_s + 10, exit=True)
        self._timer = threading.Timer(self.deadline_s, self._expired)
        self._timer.daemon = True
        self._timer.name = "stop-watchdog"
        self._timer.start()

    def _task_stacks(self) -> str:
        """Every asyncio task's stack, asked of the loop; a note instead if the loop is stuck."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return "(no event loop)"

        async def stacks() -> str:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            return "\n".join(f"task {t.get_name()}:\n{task_stack(t)}" for t in tasks) or "(no tasks)"

        try:
            return asyncio.run_coroutine_threadsafe(stacks(), loop).result(1.0)
        except Exception:
            return "(the event loop does not answer: a call blocks it; see the threads below)"

    def _expired(self) -> None:
        with contextlib.suppress(Exception):  # nothing here may keep the exit below from happening
            log.error(
                "still not stopped %.0f s after the stop began (at: %s); writing every task's and "
                "thread's stack, then stopping this node's children and exiting",
                self.deadline_s, self.step,
            )  # fmt: skip
            log.error("asyncio tasks:\n%s", self._task_stacks())
            for handler in logging.getLogger().handlers:
                handler.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        with contextlib.suppress(Exception):
            killed = kill_children()
            if killed:
                log.error("killed %d child process(es)", killed)
            sys.stderr.flush()
            sys.stdout.flush()
        os._exit(EXIT_STUCK)
