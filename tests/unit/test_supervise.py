"""Background loops restart after a crash, with the traceback logged, and stop on cancel."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mesh_llm.supervise import cancel_and_wait, supervised


async def test_a_crashing_loop_body_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise OverflowError("cannot convert float infinity to integer")

    with caplog.at_level(logging.ERROR, logger="mesh_llm.supervise"):
        await asyncio.wait_for(supervised("advertise", body, backoff=(0.0,)), 5)
    assert runs == 3
    crashes = [r for r in caplog.records if "advertise crashed" in r.getMessage()]
    assert len(crashes) == 2 and all(r.exc_info and r.exc_info[0] is OverflowError for r in crashes)


async def test_backoff_grows_and_cancel_stops_the_loop() -> None:
    delays: list[float] = []

    async def body() -> None:
        raise RuntimeError("boom")

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 4:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await supervised("gossip", body, backoff=(0.5, 1.0, 2.0), sleep=sleep)
    assert delays == [0.5, 1.0, 2.0, 2.0]


async def test_a_one_shot_task_that_fails_is_logged_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    from mesh_llm.supervise import spawn_logged

    async def boom() -> None:
        raise RuntimeError("lost")

    async def fine() -> int:
        return 3

    with caplog.at_level(logging.ERROR, logger="mesh_llm.supervise"):
        failed = spawn_logged(boom(), "boom")
        ok = spawn_logged(fine(), "fine")
        await asyncio.wait([failed, ok])
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert ok.result() == 3
    assert [r.getMessage() for r in caplog.records] == ["background task boom failed"]
    assert caplog.records[0].exc_info is not None


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def loop() -> None:  # what a wait_for finishing as the cancel arrives does to its caller
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 2:
                    raise

    task = asyncio.create_task(loop(), name="discovery")
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, again_s=0.01), 5)
    assert task.cancelled() and swallowed == 3


async def test_a_task_that_fails_as_it_is_cancelled_has_its_failure_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise OSError("relay gone") from None

    task = asyncio.create_task(fails(), name="discovery")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="mesh_llm.supervise"):
        await asyncio.wait_for(cancel_and_wait(task), 5)
    assert any("discovery: relay gone" in r.getMessage() for r in caplog.records)
