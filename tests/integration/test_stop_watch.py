"""The bounds on a node's stop: a step that hangs is named and left; a stuck process is ended."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from mesh_llm.node._stop_watch import EXIT_STUCK, bounded_step
from mesh_llm.supervise import all_logged
from tests.harness import REPO, wait_gone


async def _waits_forever() -> None:
    await asyncio.Event().wait()


async def test_a_step_that_hangs_is_named_with_where_it_waits_and_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "mesh_llm.node")
    assert not await bounded_step("delisting the mesh", _waits_forever(), 0.05)
    text = caplog.text
    assert "stopping: delisting the mesh did not finish within 0 s; going on without it" in text
    assert "_waits_forever" in text  # the coroutine it waits in


async def test_a_step_of_several_parts_that_hangs_is_named_and_each_failure_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("model server gone")

    caplog.set_level(logging.WARNING, "mesh_llm")
    assert await bounded_step("model servers", all_logged("model servers", [fails(), asyncio.sleep(0)]), 5.0)
    assert "stopping: model servers: model server gone" in caplog.text
    assert not await bounded_step("the console", all_logged("the console", [_waits_forever()]), 0.05)
    assert "stopping: the console did not finish within 0 s; going on without it" in caplog.text


async def test_a_step_that_fails_is_logged_and_the_stop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("relay gone")

    caplog.set_level(logging.WARNING, "mesh_llm.node")
    assert await bounded_step("leaving the mesh", fails(), 5.0)
    assert "stopping: leaving the mesh failed: relay gone" in caplog.text
    assert await bounded_step("the console", asyncio.sleep(0), 5.0)


STUCK = textwrap.dedent(
    """
    import asyncio, os, subprocess, sys, time
    from mesh_llm.node import StopWatch

    async def main():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
        print(child.pid, flush=True)
        watch = StopWatch(0.5)
        watch.step = "leaving the mesh"
        watch.start()
        time.sleep(120)  # a call that blocks the event loop: no asyncio timeout can end it

    asyncio.run(main())
    """
)


def test_a_stop_stuck_in_a_blocking_call_ends_with_stacks_and_no_orphans(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    child_pid = int(out.split()[0])
    assert proc.returncode == EXIT_STUCK, err
    assert "still not stopped 0 s after the stop began (at: leaving the mesh)" in " ".join(err.split())
    assert "the event loop does not answer" in err
    assert 'File "<string>"' in err and "in main" in err  # the main thread's stack, from faulthandler
    assert wait_gone([child_pid]) == [] or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
