"""``bftfs.net.idle.wait_all_tasks_blocked``: the endpoint's flusher waits until every task
with a request to send has queued it, without trio's test module (issue 31, item 8)."""

from __future__ import annotations

import socket

import trio

from bftfs.net.idle import wait_all_tasks_blocked


def test_returns_only_after_every_other_task_blocked() -> None:
    """Tasks that take many steps, and a chain handing work on through a channel, all
    finish before the waiter wakes."""
    done: list[str] = []

    async def steps(name: str, count: int) -> None:
        for _ in range(count):
            await trio.lowlevel.checkpoint()
        done.append(name)

    async def relay(rx: trio.MemoryReceiveChannel[int]) -> None:
        async for hops in rx:
            await trio.lowlevel.checkpoint()
            done.append(f"hop{hops}")

    async def main() -> None:
        tx, rx = trio.open_memory_channel[int](10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay, rx)
            for i in range(5):
                nursery.start_soon(steps, f"t{i}", 20 * (i + 1))
            for hop in range(3):
                tx.send_nowait(hop)
            await wait_all_tasks_blocked()
            assert sorted(done) == sorted([f"t{i}" for i in range(5)] + ["hop0", "hop1", "hop2"])
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_waits_for_tasks_the_poll_wakes() -> None:
    """Data already waiting on a socket: its reader runs before the waiter wakes (the
    wait ends only after a poll that found nothing ready)."""
    got: list[bytes] = []

    async def reader(sock: trio.socket.SocketType) -> None:
        got.append(await sock.recv(100))

    async def main() -> None:
        a, b = socket.socketpair()
        with a, b:
            ta = trio.socket.from_stdlib_socket(a)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, ta)
                await wait_all_tasks_blocked()  # the reader is parked on recv
                assert got == []
                b.send(b"x")
                await wait_all_tasks_blocked()
                assert got == [b"x"]

    trio.run(main)


def test_several_waiters_and_cancellation() -> None:
    """Two waiters both wake; a cancelled wait leaves no waiter behind to be woken."""
    woke: list[int] = []

    async def waiter(i: int) -> None:
        await wait_all_tasks_blocked()
        woke.append(i)

    async def busy(stop: trio.Event) -> None:
        while not stop.is_set():
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy, stop)
            with trio.move_on_after(0.05) as scope:
                await wait_all_tasks_blocked()  # never idle while busy runs
            assert scope.cancelled_caught
            stop.set()
            nursery.start_soon(waiter, 1)
            nursery.start_soon(waiter, 2)
        assert sorted(woke) == [1, 2]

    trio.run(main)
