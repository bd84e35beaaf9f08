"""Helpers shared by the node's supervised subprocesses (model servers, RPC workers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


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
