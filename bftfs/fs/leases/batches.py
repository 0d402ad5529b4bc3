"""How the leases this mount asks for go to the nodes (issue 62): in updates of
:data:`~bftfs.fs.leases.releases.BATCH` objects of one kind and one quorum, at most
:data:`FILE_BATCHES` updates for files' leases under way at a time, a directory's beside
them at once, and what is asked meanwhile sent as soon as it is gathered.

Sent all at once and each gathering waiting for the one before, 5 000 files made in one
directory had their leases turned into session-bound ones by one sweep of the held files:
700 updates at the nodes together, and the directory's own renewal, asked behind them,
came 53 s later, after its lease had ended.  That broke the directory's holding, so every
file made under it became one another client may have seen, each needing a lease, a
``stat`` and a removal of its own (PostMark 5 000 files: 55 tx/s, grants waiting 6 s on
average).  A directory's exclusive lease holds back creates, removals and the appends of
its unseen files: it is renewed ahead of everything else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from bftfs.fs.leases.releases import BATCH
from bftfs.fsobjects.leases import SHARED

#: Updates asking for leases other than a directory write-back works in, under way at once.
FILE_BATCHES = 4
#: Seconds the leases asked for are gathered before they are sent (a lease is an
#: optimisation: taking it a moment later costs nothing, a round per object would).
GATHER = 0.002
#: Seconds between looks for new asks while updates are under way and nothing is asked.
POLL = 0.05


@dataclass
class Batch:
    """One update's worth of leases: its objects, their kind, whether it waits its turn
    among :data:`FILE_BATCHES` (False: a directory's write-back lease, sent at once)."""

    oids: list[int]
    kind: int
    paced: bool


def plan(
    wanted: list[int], *, solo: set[int], kinds: dict[int, int], n: int, urgent: set[int]
) -> list[Batch]:
    """The updates for the objects ``wanted``: those in ``solo`` alone (one of a refused
    batch), the others by kind and quorum (objects congruent mod ``n`` share their
    preferred quorum; a shared kind leaves room for the session), the ``urgent`` ones
    (directories write-back works in) apart and first, unpaced.  ``solo`` and ``urgent``
    lose the objects planned."""
    groups: dict[tuple[bool, int, int], list[int]] = {}
    out = []
    for oid in wanted:
        if oid in solo:
            out.append(Batch([oid], kinds.get(oid, SHARED), oid not in urgent))
        else:
            key = (oid not in urgent, kinds.get(oid, SHARED), oid % n)
            groups.setdefault(key, []).append(oid)
    for (paced, kind, _), group in groups.items():
        size = BATCH - 1 if kind == SHARED else BATCH
        out += [Batch(group[i : i + size], kind, paced) for i in range(0, len(group), size)]
    solo.difference_update(wanted)
    urgent.difference_update(wanted)
    return sorted(out, key=lambda b: b.paced)


async def send_batches(
    take: Callable[[list[int], int], Awaitable[None]],
    planned: Callable[[], list[Batch]],
    asked: Callable[[], bool],
) -> None:
    """Send the batches ``planned`` gives (it takes what is ``asked`` so far) with
    ``take``, the paced ones :data:`FILE_BATCHES` at a time, until nothing is asked or
    under way; what is asked while others are under way goes after :data:`GATHER`, not
    after them."""
    turns = trio.CapacityLimiter(FILE_BATCHES)

    async def paced(oids: list[int], kind: int) -> None:
        async with turns:
            await take(oids, kind)

    while True:
        async with trio.open_nursery() as nursery:
            while asked() or nursery.child_tasks:
                await trio.sleep(GATHER if asked() else POLL)  # a burst of asks queues
                for b in planned():
                    nursery.start_soon(paced if b.paced else take, b.oids, b.kind)
        if not asked():
            return
