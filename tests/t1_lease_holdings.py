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

from bftfs.fs.leases.holdings import MAX_CHILDREN, PURGE_AT, Holdings
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


class _CountingSet(set[int]):
    """A directory's set of inherited files that counts the walks that prune it."""

    walks = 0

    def intersection_update(self, *others: object) -> None:
        type(self).walks += 1
        super().intersection_update(*others)  # type: ignore[arg-type]


def test_a_big_directory_s_files_are_looked_over_only_as_they_double() -> None:
    """Past :data:`MAX_CHILDREN` files still held, each create walked them all to forget
    the ended ones (the mount's CPU a create grew 2 ms from the first file to the 8 000th
    in one directory); now the set is looked over again once it has doubled."""
    clock = trio.testing.MockClock()

    async def main() -> None:
        h, files = _made_under_a_directory([])
        children = h.children[DIRECTORY] = _CountingSet(files)
        for i in range(3 * MAX_CHILDREN):
            assert h.inherit(DIRECTORY, [100_000 + i])
        assert len(children) == len(files) + 3 * MAX_CHILDREN  # every one still held
        assert _CountingSet.walks == 2  # at MAX_CHILDREN + 1, then at twice the rest

    _CountingSet.walks = 0
    trio.run(main, clock=clock)


def test_files_no_longer_held_leave_their_directory_s_set() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        h, files = _made_under_a_directory([])
        for oid in files:  # removed here: their leases are gone
            h.drop(oid)
        assert h.inherit(DIRECTORY, [9])
        assert h.inherit(DIRECTORY, [10])  # past the mark: the gone ones are forgotten
        assert h.children[DIRECTORY] == {9, 10}
        levels = h.with_children([DIRECTORY])  # its recall: they go with it
        assert levels[0] == [DIRECTORY] and sorted(levels[1]) == [9, 10] and len(levels) == 2
        assert DIRECTORY not in h.children

    trio.run(main, clock=clock)


def test_a_directory_in_use_keeps_the_files_made_there_in_use() -> None:
    """A writer creating and removing in a directory uses the directory's lease, not its
    files': the files it made there and left are still in use (``used_since``), so a
    reader's request to publish one does not hand it over.  Here the directory is the
    root (its own parent, as the mount's root is), where only the directory's own use
    can say so: before, it did not count, and each file a reader looked at there was
    handed over.  Once neither the directory nor anything in it was used for the
    window, they are not in use."""
    clock = trio.testing.MockClock()

    async def main() -> None:
        h = Holdings(
            TERM,
            lambda: int(trio.current_time() * 1e9),
            Counter(),
            dropped=lambda oid: None,
            woke=lambda oids: None,
        )
        h.made(DIRECTORY, DIRECTORY, trio.current_time(), int(trio.current_time() * 1e9))
        files = [1000, 1001]
        assert h.inherit(DIRECTORY, files)
        clock.jump(5.0)
        now = trio.current_time()
        assert not h.used_since(files[0], now - 1.0, now)
        assert h.live(DIRECTORY, now) is not None  # a create there: the directory used
        assert h.used_since(files[0], now - 1.0, now)
        clock.jump(2.0)
        now = trio.current_time()
        assert not h.used_since(files[0], now - 1.0, now)
        assert h.live(files[1], now) is not None  # another file of the directory used
        assert h.used_since(files[0], now - 1.0, now)

    trio.run(main, clock=clock)
