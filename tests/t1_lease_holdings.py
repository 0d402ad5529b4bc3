"""Tier 1: a mount's holdings forget the leases of their own term that ended, so a mount
that keeps making and removing files under a directory's exclusive lease holds a bounded
number of them (``Holdings.inherit`` -> ``_forget_ended``).

Each file made under a directory's exclusive lease inherits a lease with it; a removed one
is never looked at again, and :meth:`Holdings.live` dropped an ended lease only when it
was.  Four PostMark runs on one mount left 5 178 leases held, 1 100 more each run.
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing

from bftfs.fs.leases.holdings import PURGE_AT, Holdings
from bftfs.fsobjects.leases import EXCLUSIVE

TERM = 30.0
DIRECTORY = 7


def _made_under_a_directory(dropped: list[int]) -> tuple[Holdings, list[int]]:
    """Holdings on trio's clock with :data:`DIRECTORY` made here (held exclusively) and
    :data:`PURGE_AT` files made in it, each inheriting its lease; those files."""
    h = Holdings(
        TERM,
        lambda: int(trio.current_time() * 1e9),
        Counter(),
        dropped=dropped.append,
        woke=lambda oids: None,
    )
    h.made(DIRECTORY, 1, trio.current_time(), int(trio.current_time() * 1e9))
    files = list(range(1000, 1000 + PURGE_AT))
    assert h.inherit(DIRECTORY, files)
    return h, files


def test_ended_inherited_leases_are_forgotten_and_live_ones_kept() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        dropped: list[int] = []
        h, first = _made_under_a_directory(dropped)  # one term's worth of files made
        clock.jump(TERM + 1)  # their leases (and the directory's) ended, nobody looked
        h.made(DIRECTORY, 1, trio.current_time(), int(trio.current_time() * 1e9))
        assert len(h.held) == PURGE_AT + 1
        assert h.inherit(DIRECTORY, [9])  # the next file made: the ended ones go
        assert set(h.held) == {DIRECTORY, 9}
        assert sorted(dropped) == first
        assert h.stats["ended_forgotten"] == PURGE_AT
        assert h.held[9].kind == EXCLUSIVE

    trio.run(main, clock=clock)


def test_leases_still_running_are_not_forgotten() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        dropped: list[int] = []
        h, _ = _made_under_a_directory(dropped)
        assert h.inherit(DIRECTORY, [9])  # past the mark, but every lease still runs
        assert len(h.held) == PURGE_AT + 2 and not dropped

    trio.run(main, clock=clock)
