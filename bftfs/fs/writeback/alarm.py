"""The wake-up of a write-back task that sleeps until the next thing held back is due.

Each wake-up is a pass over everything the task holds back (``WriteBack.run``,
``HeldFiles.run``); PostMark holds about a thousand creates and removals back, and a pass
per deferral was 15% of the daemon's CPU on an aged cluster.  A deferral due after the
task's sleep ends needs none: the task looks at everything again before it sleeps."""

from __future__ import annotations

import trio


class Alarm:
    """When a task's sleep ends, and the wake-up for what comes due before it."""

    def __init__(self) -> None:
        self._event = trio.Event()
        #: When the current sleep ends (trio time); -inf while the task works.
        self.until = float("-inf")

    def due(self, at: float | None = None) -> None:
        """Something is held back due at ``at`` (None: the task must look at once)."""
        if at is None or at < self.until:
            self._event.set()

    async def sleep_until(self, at: float) -> None:
        """Sleep until ``at`` or an earlier :meth:`due`."""
        self._event = trio.Event()
        self.until = at
        try:
            with trio.move_on_at(at):
                await self._event.wait()
        finally:
            self.until = float("-inf")
