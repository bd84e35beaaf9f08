"""Background loops that cannot die silently: crash -> traceback in the log -> restart.

`supervised(name, body)` runs an async loop function forever. If the body raises, the
exception and its traceback are logged and the body starts again after a backoff that grows
from 0.5 s to 30 s (a body that ran fine for a minute starts over at the shortest delay).
Cancellation stops it, as it stops any task. A loop whose body returns normally has finished
its work and is not restarted. `spawn_logged(coro, name)` runs a one-shot task whose failure is
logged with its traceback the moment it ends, instead of waiting to be noticed (or never).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

BACKOFF_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
STABLE_AFTER_S = 60.0


async def supervised(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    backoff: Sequence[float] = BACKOFF_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run `body()` until it returns or this task is cancelled, restarting it after crashes."""
    failures = 0
    while True:
        started = clock()
        try:
            await body()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if clock() - started > STABLE_AFTER_S:
                failures = 0
            delay = backoff[min(failures, len(backoff) - 1)]
            failures += 1
            log.exception("background loop %s crashed (restart %d in %g s)", name, failures, delay)
            await sleep(delay)


def spawn_supervised(name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """`supervised` as a named task."""
    return asyncio.create_task(supervised(name, body), name=name)


def _report_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s failed", task.get_name(), exc_info=exc)


def spawn_logged(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """A one-shot task whose exception, if it raises, is logged with its traceback at once."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report_failure)
    return task


async def all_logged(what: str, works: Sequence[Awaitable[object]], logger: logging.Logger = log) -> None:
    """Await several things side by side; each one's failure is logged (none lost, none stops the rest)."""
    for result in await asyncio.gather(*works, return_exceptions=True):
        if isinstance(result, Exception):
            logger.warning("stopping: %s: %s", what, result, exc_info=result)


async def cancel_and_wait(
    task: asyncio.Task[Any], logger: logging.Logger = log, again_s: float = 0.5
) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again every `again_s`: an
    `asyncio.wait_for` whose work finishes just as the cancel arrives returns instead of raising
    (Python 3.11), and the task would run on. Its failure, if it failed, is logged."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=again_s)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("stopping: %s: %s", task.get_name(), exc, exc_info=exc)
