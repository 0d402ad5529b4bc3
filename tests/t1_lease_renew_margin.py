"""Tier 1: a lease is renewed ahead of its end by a margin scaled to how long grants have
been taking (``Taker.renew_margin``, ``bftfs/fs/leases/taking.py``; issue 64), the mount's
leases under trio's ``MockClock`` with an update that takes as long as the test says.

At `b = 2` on a loaded machine (11 nodes, each round 2.5x the nodes' work of `b = 1`) a
grant waited seconds: its own rounds and the queue of the directory's other updates.  A
write-back directory's exclusive lease was renewed with half its span (12.5 s of 25) left
whatever the rounds took: a renewal slower than that came back after the lease's end, the
holding broke (``lapsed``), and with it every file made under it stopped being one no
other client can have seen (``leases/unseen.py``), so each went back to leases of its
own; meanwhile every deferred create found less than two write-back margins (6 s) left and
went at once.  Slow is not unavailable: the renewal goes earlier, the lease is not lost.
Counts, not times: leases lapsed, and the creates that found too little lease left to
wait."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from bftfs.fs.leases import Leases
from bftfs.fs.writeback.schedule import LEASE_MARGIN
from bftfs.fsobjects.leases import EXCLUSIVE

TERM = 30.0
DIR = 16
#: A deferred create every this many seconds (PostMark's pace at `b = 2`, loaded).
PACE = 0.25
#: How long each grant takes, in turn: the machine's load rising, each wait under twice
#: the last one (the last stays).  Under half a lease's span less a write-back margin
#: (9.5 s): slower grants cannot keep the lease above two margins, however early they are
#: asked (each leaves 25 s less its own wait, the next one takes as long).
WAITS = [0.2, 1.5, 3.0, 4.5, 6.0, 7.0, 8.0, 8.0, 8.0, 8.0]


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def _work_in_a_directory(seconds: float) -> dict[str, int]:
    """One directory's write-back under an exclusive lease for ``seconds``: a deferred
    create every :data:`PACE` (``Leases.want_exclusive``, as ``WriteBack.defer`` does),
    each ``fs.lease`` answered after the next of :data:`WAITS`.  What the leases counted,
    and ``short``: the creates that found two write-back margins or less left (they went
    at once), ``holdings``: how many holdings of the directory there were."""

    async def main() -> dict[str, int]:
        waits = iter(WAITS)
        wait = 0.0
        grants = []

        async def update(objects: list[int], method: str, arg: Any) -> Any:
            nonlocal wait
            if method != "fs.lease":
                return None  # (a release: none is expected while the lease is held)
            assert arg["kind"] == EXCLUSIVE, arg
            wait = next(waits, wait)
            await trio.sleep(wait)  # the rounds, and the directory's updates queued ahead
            grants.append(trio.current_time())
            return None

        async with trio.open_nursery() as nursery:
            leases = Leases(
                update,
                None,
                term=TERM,
                b=2,
                spawn=nursery.start_soon,
                n=11,
                wall_ns=lambda: int(trio.current_time() * 1e9) + 10**18,
            )
            short = 0
            starts = set()
            end = trio.current_time() + seconds
            while trio.current_time() < end:
                left = leases.exclusive_left(DIR)
                if left <= 2 * LEASE_MARGIN:
                    short += 1
                since = leases.holdings.exclusive_from(DIR)
                if since is not None:
                    starts.add(since)
                leases.want_exclusive(DIR)
                await trio.sleep(PACE)
            nursery.cancel_scope.cancel()
        return {**leases.stats, "short": short, "holdings": len(starts), "grants": len(grants)}

    result: dict[str, int] = run(main)
    return result


def test_a_directory_lease_outlives_renewals_that_take_longer_and_longer() -> None:
    """Grants taking longer and longer, each under twice the one before, up to 8 s: one
    holding of the directory from the first grant to the end, no renewal lapsed, and
    (past the first grants) no create finds two write-back margins or less left.  Before
    (renewed at 12.5 s left whatever the grants took) every renewal slower than 6.5 s
    left the creates of its last seconds no lease to wait on: they went at once."""
    got = _work_in_a_directory(200.0)
    assert got["grants"] >= len(WAITS), got
    assert got.get("lapsed", 0) == 0, got
    assert got["holdings"] == 1, got
    # Only while it learns: before the first grant (one create) and at the first wait
    # more than the margin had allowed for (7 s after 6 s, 12.5 s left: four).  Before:
    # 75, a few seconds of every slow renewal.
    assert got["short"] <= 6, got
