"""The file system's background work has one owner (issue 61): a nursery the running file
system holds, cancelled at its end, instead of trio system tasks only the run's end stops."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing
from checklogs import ExpectLog

from bftfs.fs.background import Background, NotRunning


async def test_tasks_run_in_the_attached_nursery_and_end_with_it() -> None:
    bg = Background()
    started = trio.Event()
    ended = False

    async def forever() -> None:
        nonlocal ended
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            ended = True

    async with trio.open_nursery() as nursery:
        bg.attach(nursery)
        bg.spawn(forever)
        await started.wait()
        bg.detach()
        nursery.cancel_scope.cancel()
    assert ended and not bg.running


async def test_a_task_started_when_not_running_is_refused_clearly() -> None:
    bg = Background()
    with pytest.raises(NotRunning, match="open_file_system"):
        bg.spawn(trio.lowlevel.checkpoint)


async def test_a_start_asked_while_the_file_system_closes_is_dropped() -> None:
    """A lease granted as the mount stopped started its session's renewals from a task
    still running: once detached, the start is dropped, not raised beside the nursery's
    cancellation (which made the close fail with a group of both)."""
    bg = Background()
    started: list[str] = []

    async def late() -> None:
        started.append("late")

    async def still_running() -> None:
        try:
            await trio.sleep_forever()
        finally:
            bg.spawn(late)  # (as Sessions.bound does after a grant)

    async with trio.open_nursery() as nursery:
        bg.attach(nursery)
        bg.spawn(still_running)
        await trio.testing.wait_all_tasks_blocked()
        bg.detach()
        nursery.cancel_scope.cancel()
    assert started == [] and not bg.running


async def test_a_failing_task_is_logged_and_the_others_go_on(expect_log: ExpectLog) -> None:
    bg = Background()
    done = trio.Event()

    async def fails() -> None:
        raise ValueError("a task's own bug")

    async def goes_on() -> None:
        await trio.lowlevel.checkpoint()
        done.set()

    with expect_log("bftfs.fs.background", "ERROR", match="background task", count=1):
        async with trio.open_nursery() as nursery:
            bg.attach(nursery)
            bg.spawn(fails)
            bg.spawn(goes_on)
            await done.wait()
