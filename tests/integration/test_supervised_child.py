"""SupervisedChild with real child processes: readiness, exits, log tail, stopping its group."""

from __future__ import annotations

import asyncio
import logging
import sys
from enum import Enum
from pathlib import Path

import pytest

from mesh_llm.serving.process import Exited, SupervisedChild, TimedOut
from tests.harness import wait_gone


class State(Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPED = "stopped"


def child(tmp_path: Path, changes: list[State] | None = None) -> SupervisedChild[State]:
    sink = changes if changes is not None else []
    c: SupervisedChild[State] = SupervisedChild(
        "test child", tmp_path / "logs" / "child.log", State.STOPPED, stop_timeout_s=5.0,
        on_change=lambda: sink.append(c.state),
    )  # fmt: skip
    return c


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def never() -> bool:
    return False


async def test_a_child_that_exits_while_starting_is_reported_with_its_code_and_log(tmp_path: Path) -> None:
    c = child(tmp_path)
    await c.spawn(python("print('cannot start: no model'); raise SystemExit(3)"))
    assert await c.wait_ready(never, timeout_s=30.0, poll_s=0.05) == Exited(3)
    assert c.log_tail() == "cannot start: no model"
    assert c.pid is None


async def test_a_child_that_never_gets_ready_times_out_and_stop_ends_it(tmp_path: Path) -> None:
    c = child(tmp_path)
    await c.spawn(python("import time; time.sleep(60)"))
    assert await c.wait_ready(never, timeout_s=0.2, poll_s=0.05) == TimedOut(0.2)
    pid = c.pid
    assert pid is not None
    await c.stop()
    assert c.pid is None
    assert wait_gone([pid]) == []


async def test_stop_ends_the_whole_process_group_and_nothing_else(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    c = child(tmp_path)
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    await c.spawn(python(code))

    async def grandchild_started() -> bool:
        return marker.exists() and marker.read_text() != ""

    assert await c.wait_ready(grandchild_started, timeout_s=30.0, poll_s=0.05) is None
    pids = [c.pid or 0, int(marker.read_text())]
    await c.stop()
    assert wait_gone(pids) == []


async def test_an_exit_nobody_asked_for_is_reported_and_a_stop_is_not(tmp_path: Path) -> None:
    exits: list[int] = []
    reported = asyncio.Event()

    def on_exit(code: int) -> None:
        exits.append(code)
        reported.set()

    c = child(tmp_path)
    await c.spawn(python("raise SystemExit(7)"))
    c.watch_exit(on_exit)
    await asyncio.wait_for(reported.wait(), 30.0)
    assert exits == [7]

    c2 = child(tmp_path)
    await c2.spawn(python("import time; time.sleep(60)"))
    c2.watch_exit(on_exit)
    await c2.stop()
    assert exits == [7]


def test_each_state_change_is_logged_once_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[State] = []
    c = child(tmp_path, changes)
    with caplog.at_level(logging.INFO, logger="mesh_llm.serving.process"):
        c.set_state(State.STARTING, "loading model")
        c.set_state(State.STARTING, "loading model")
        c.set_state(State.READY)
    assert changes == [State.STARTING, State.READY]
    assert [r.getMessage().rstrip() for r in caplog.records] == [
        "test child: stopped -> starting loading model",
        "test child: starting -> ready",
    ]
    assert (c.state, c.message) == (State.READY, "")
