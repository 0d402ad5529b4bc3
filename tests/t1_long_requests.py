"""Tier 1: a request in flight long is logged and shown (``fuse/callrecord.py``): a hard
mount on a live cluster waits rather than fail, so a request that never ends showed
nowhere but in the program stuck on it.  Times are passed in."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from bftfs import taskstacks
from bftfs.fuse.callrecord import LONG_REQUEST, CallRecord
from bftfs.fuse.handler import handler
from bftfs.fuse.kernelheld import KernelHeld
from bftfs.fuse.paths import KnownPaths
from bftfs.fuse.recentlookups import RecentLookups


def test_the_oldest_request_in_flight_and_its_age() -> None:
    r = CallRecord()
    assert r.oldest(5.0) is None
    a = r.begin("lookup", 1.0, lambda: "/a")
    r.begin("unlink", 2.0, lambda: "/b")
    assert r.oldest(5.0) == ("lookup", 4.0)
    r.end(a)
    assert r.oldest(5.0) == ("unlink", 3.0)


def test_a_long_request_is_logged_once_per_doubling_of_its_age(expect_log: Any) -> None:
    r = CallRecord()
    described: list[str] = []

    def what() -> str:
        described.append("/pm/123")
        return "/pm/123"

    n = r.begin("unlink", 0.0, what)
    r.begin("getattr", LONG_REQUEST, lambda: "/x")  # younger: not yet
    with (
        expect_log("bftfs.fuse.operations", match="has been waiting", count=4),
        expect_log("bftfs.fuse.operations", match="the daemon's tasks", count=3),
    ):
        assert r.log_long(LONG_REQUEST - 1) == 0 and not described  # described only if logged
        with expect_log("bftfs.fuse.operations", match="unlink of /pm/123 .* 60s", count=1):
            assert r.log_long(LONG_REQUEST) == 1
        assert r.log_long(LONG_REQUEST + 30) == 0  # once until its age doubles
        assert r.log_long(2 * LONG_REQUEST) == 2  # doubled; the other reached the bound
        r.end(n)
        assert r.log_long(10 * LONG_REQUEST) == 1  # the ended one is gone
    assert described == ["/pm/123", "/pm/123"]


async def _parked(go: trio.Event) -> None:
    """Where the test's handler waits (a frame of its own for the stacks to show)."""
    await go.wait()


class _Host:
    """What the FUSE handler decorator reads on ``Operations`` (``fuse/handler.py``)."""

    read_only = False
    timeo: float | None = 10.0
    soft = False
    hard = True

    def __init__(self) -> None:
        self.record = CallRecord()
        self.lookups = RecentLookups()
        self.paths = KnownPaths()
        self.held = KernelHeld()
        self.go = trio.Event()

    def revoked_in(self) -> int | None:
        return None

    @handler
    async def unlink(self, parent: int, name: bytes, ctx: Any) -> None:
        await _parked(self.go)


def test_every_handler_call_is_in_flight_until_it_is_answered() -> None:
    """The handler decorator counts each call in flight from its start to its answer."""

    async def main() -> None:
        host = _Host()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.unlink, 1, b"x", None)
            await trio.testing.wait_all_tasks_blocked()
            oldest = host.record.oldest(time.perf_counter())
            assert oldest is not None and oldest[0] == "unlink"
            host.go.set()
        assert host.record.oldest(time.perf_counter()) is None

    trio.run(main)


def test_a_long_request_is_logged_with_what_it_and_every_task_wait_on(
    expect_log: Any, monkeypatch: Any
) -> None:
    """A request that never ends is logged with its handler's await stack (from the
    handler's coroutine: pyfuse3's compiled coroutines above it hide it from the task's)
    and then every task's: what it waits on may be another task waiting in turn."""
    monkeypatch.setattr(taskstacks, "_PACKAGE", str(Path(__file__).resolve().parent))

    async def main() -> None:
        host = _Host()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.unlink, 1, b"x", None)
            await trio.testing.wait_all_tasks_blocked()
            later = time.perf_counter() + LONG_REQUEST
            own = r"unlink .* in t1_long_requests\.py:\d+ unlink > t1_long_requests\.py:\d+ _parked"
            every = "(?s)the daemon's tasks:\n.*_parked"
            with (
                expect_log("bftfs.fuse.operations", match=own),
                expect_log("bftfs.fuse.operations", match=every),
            ):
                assert host.record.log_long(later) == 1
            host.go.set()

    trio.run(main)
