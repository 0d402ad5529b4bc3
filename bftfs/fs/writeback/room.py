"""Room in write-back at its bound: the oldest held-back work goes early, batched.

Write-back holds at most ``max_deferred`` creates and removals (``schedule.py``).  Past
it, a create or removal that could not be held back went at once, a round of its own,
while the held-back ones waited for their due time: a program making or removing
thousands of files in one directory outran the due times, and 3 000 files made went 604
alone (10.9 s).  At the bound the task now sends the oldest held-back ones early, an
update's worth (``batch_size``) or all the removals (:meth:`Room.due_by`): a removal
waits for that (:meth:`Room.wait`, :meth:`Room.made`), as a writer waits at a local file
system's dirty-page limit; a close asks for it and goes on (:meth:`Room.hurry`), its
create sent alone once more: waiting, the closes of PostMark 2 000 files took 10-15%
longer (a directory kept at its bound sends everything early, before its removal can
cancel it), for no fewer rounds.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import trio


class Room:
    """One kind of held-back work (creates, or removals) that a writer at the bound asks
    to go early, and may wait for (module docstring)."""

    def __init__(self) -> None:
        self._made = trio.Event()
        #: Whether a writer asked: the task sends some of this kind now, due or not.
        self._hurried = False

    async def wait(self) -> None:
        """Wait until :meth:`made` is next called (the caller has already woken the task)."""
        if self._made.is_set():
            self._made = trio.Event()
        made = self._made
        self._hurried = True
        await made.wait()

    def hurry(self) -> None:
        """Ask the task to send some of this kind early, not waiting for it."""
        self._hurried = True

    def due_by(self, now: float, times: Iterable[float], most: int | None = None) -> float:
        """What the task sends now is what is due by this (the task's look: it clears a
        writer's request): ``now``; once a writer asked, everything, or with ``most``
        the ``most`` held back longest (those due soonest)."""
        hurried, self._hurried = self._hurried, False
        if not hurried:
            return now
        if most is None:
            return float("inf")
        soonest = heapq.nsmallest(most, times)
        return max(now, soonest[-1]) if soonest else now

    def made(self) -> None:
        """Some held-back work of this kind was taken out: the writers waiting go on."""
        self._made.set()
