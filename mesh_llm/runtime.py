"""The runtime file: how `mesh-llm status` (and friends) find the node running on this machine.

A running node writes `<state-dir>/runtime.json` with its pid and ports once its HTTP servers
listen, and removes it on a clean exit. A file left by a node that died (its pid is gone, or
now belongs to a process started after the file was written) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

FILE_NAME = "runtime.json"


@dataclass(frozen=True)
class RunningNode:
    """What the runtime file says about a live node."""

    pid: int
    node_id: str
    api_port: int | None
    console_port: int | None
    api_host: str
    started_at: float
    path: Path


class RuntimeFile:
    """The runtime file of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def write(self, *, node_id: str, api_port: int | None, console_port: int | None, api_host: str) -> None:
        data = {
            "pid": os.getpid(),
            "node_id": node_id,
            "api_port": api_port,
            "console_port": console_port,
            "api_host": api_host,
            "started_at": time.time(),
        }
        tmp = self.path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(data) + "\n")
            os.replace(tmp, self.path)

    def remove(self) -> None:
        """Remove the file if this process wrote it (another node may have taken the dir since)."""
        found = self.read(check_alive=False)
        if found is not None and found.pid == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def read(self, *, check_alive: bool = True) -> RunningNode | None:
        """The node the file describes; None when there is none or it is not running."""
        try:
            data: Any = json.loads(self.path.read_text())
            node = RunningNode(
                pid=int(data["pid"]),
                node_id=str(data["node_id"]),
                api_port=_port(data.get("api_port")),
                console_port=_port(data.get("console_port")),
                api_host=str(data.get("api_host") or "127.0.0.1"),
                started_at=float(data["started_at"]),
                path=self.path,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if check_alive and not is_alive(node.pid, node.started_at):
            return None
        return node


def is_alive(pid: int, written_at: float) -> bool:
    """Whether `pid` is a live process that existed when the file was written (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= written_at + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _port(value: Any) -> int | None:
    return value if isinstance(value, int) and 0 < value < 65536 else None
