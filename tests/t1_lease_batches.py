"""Tier 1: how the leases a mount asks for go to the nodes (``fs/leases/batches.py``), on
trio's mock clock: a directory's write-back lease goes first and at once, however many
files' leases are under way, and those go a few updates at a time.

5 000 files made in one directory had their leases asked for in one sweep, 700 updates
at once, and the directory's renewal, asked behind them, came after its lease ended
(issue 62).  The update here is a function that takes a second of virtual time."""

from __future__ import annotations

import trio
import trio.testing

from bftfs.fs.leases.batches import FILE_BATCHES, Batch, plan, send_batches
from bftfs.fs.leases.releases import BATCH
from bftfs.fsobjects.leases import EXCLUSIVE, SHARED

N = 6
DIRECTORY = 6 * 1000 + 1


def test_plan_groups_by_kind_and_quorum_and_puts_the_directory_first() -> None:
    files = [N * k + 1 for k in range(20)]  # one quorum
    kinds = {o: SHARED for o in files} | {DIRECTORY: EXCLUSIVE}
    solo, urgent = {files[0]}, {DIRECTORY}
    got = plan([*files, DIRECTORY], solo=solo, kinds=kinds, n=N, urgent=urgent)
    assert got[0] == Batch([DIRECTORY], EXCLUSIVE, paced=False)
    assert Batch([files[0]], SHARED, paced=True) in got
    shared = [b for b in got[1:] if b.oids != [files[0]]]
    assert [len(b.oids) for b in shared] == [BATCH - 1, BATCH - 1, 19 - 2 * (BATCH - 1)]
    assert sorted(o for b in got for o in b.oids) == sorted([*files, DIRECTORY])
    assert solo == set() and urgent == set()


def test_a_directory_asked_behind_many_files_is_sent_at_once() -> None:
    under_way: list[int] = []
    most = [0]
    sent: dict[int, float] = {}
    wanted: list[Batch] = []

    async def take(oids: list[int], kind: int) -> None:
        sent[oids[0]] = trio.current_time()
        under_way.append(oids[0])
        most[0] = max(most[0], sum(1 for o in under_way if o != DIRECTORY))
        await trio.sleep(1.0)
        under_way.remove(oids[0])

    def planned() -> list[Batch]:
        out = list(wanted)
        wanted.clear()
        return out

    async def main() -> None:
        wanted.extend(Batch([k], SHARED, paced=True) for k in range(1, 101))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_batches, take, planned, lambda: bool(wanted))
            await trio.sleep(3.5)  # the files' leases are under way
            wanted.append(Batch([DIRECTORY], EXCLUSIVE, paced=False))
        assert len(sent) == 101

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert most[0] == FILE_BATCHES
    assert sent[DIRECTORY] - 3.5 < 0.1, "the directory waited for the files' leases"
    assert max(sent.values()) >= 100 / FILE_BATCHES - 1
