"""Waiting until every other task of the trio run is blocked, without trio's test module.

The endpoint's flusher (``Endpoint._flusher``) lets every task with a request to send queue
it before the outboxes are written, so that one frame carries them all.  trio offers that
wait only as ``wait_all_tasks_blocked`` in its test module; production code
must not depend on a module meant for tests.  This is the same wait (its ``cushion = 0``)
built on the public instrument API:

- a waiter parks itself (``wait_task_rescheduled``) and arms the run's :class:`_IdleWatch`;
- when the run loop is about to wait for I/O with no runnable task (``before_io_wait``),
  every task is blocked: the watch wakes the loop at once (``run_sync_soon``, so the poll
  does not sleep until the next deadline) and notes that it probes;
- after that poll (``after_io_wait``), if it made nothing runnable but trio's own
  ``run_sync_soon`` task, nothing was ready either: the waiters are rescheduled.  Otherwise
  the woken tasks run first and the watch probes again the next time the loop idles.

The instrument costs one call per loop pass, and a wake-up write only while someone waits
and the loop is idle.
"""

from __future__ import annotations

import trio
from trio.lowlevel import RunVar, Task

#: Tasks the poll that ends a probe may make runnable and still count as idle: trio's
#: ``run_sync_soon`` task, woken by the probe's own wake-up.
_PROBE_WAKES = 1


class _IdleWatch(trio.abc.Instrument):
    """One per trio run: wakes the tasks in :func:`wait_all_tasks_blocked` when the run
    is idle (see the module docstring)."""

    def __init__(self) -> None:
        self.waiters: set[Task] = set()
        self.probing = False
        self.token = trio.lowlevel.current_trio_token()

    def before_io_wait(self, timeout: float) -> None:
        if not self.waiters or trio.lowlevel.current_statistics().tasks_runnable:
            self.probing = False
            return
        self.probing = True
        self.token.run_sync_soon(_nothing)

    def after_io_wait(self, timeout: float) -> None:
        if not self.probing:
            return
        self.probing = False
        if trio.lowlevel.current_statistics().tasks_runnable > _PROBE_WAKES:
            return  # the poll woke tasks: they run first, the next idle loop probes again
        waiters, self.waiters = self.waiters, set()
        for task in waiters:
            trio.lowlevel.reschedule(task)


def _nothing() -> None:
    """The probe's wake-up: its only effect is that the loop's poll returns at once."""


_WATCH: RunVar[_IdleWatch] = RunVar("bftfs_idle_watch")


async def wait_all_tasks_blocked() -> None:
    """Return once every other task of this trio run is blocked and a poll of the
    descriptors found none ready (as trio's test helper of that name).

    Cancellation works as for any trio wait (the flusher bounds it with ``move_on_after``).
    """
    try:
        watch = _WATCH.get()
    except LookupError:
        watch = _IdleWatch()
        trio.lowlevel.add_instrument(watch)
        _WATCH.set(watch)
    task = trio.lowlevel.current_task()
    watch.waiters.add(task)

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        watch.waiters.discard(task)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
