"""Tier 2: an operation waiting for its turn on an object behind another operation of the
same client keeps its patience while that one backs off (``qu.client.ObjectLock``,
``bftfs.outcome.caught_up``; issue 39), on the in-process cluster (real node services,
TCP, LMDB).

A mount runs one Q/U operation per object at a time.  A call queued behind a task of its
own mount that backed off for contention (a backoff uses up none of that task's patience)
still spent its own patience waiting, and then had no time left for its rounds: "fewer
than q servers answer (3 rounds in a row; 0 answered)" with every node up
(``tests/t5_fs_contention.py`` failed so on CI, an fsync behind a create).  The holder
here is what a contended operation does between rounds: it holds the object and backs off
(``Attempt.back_off``) for longer than the waiter's whole patience.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from qu_helpers import counting_client

from bftfs.outcome import patience
from bftfs.qu.attempt import Attempt
from bftfs.qu.client import QUClient
from bftfs.testing.cluster import open_cluster

OID = 17
#: Each operation's patience (a mount's timeo, short); the holder waits 1.5 times it.
PATIENCE = 0.5


async def update_behind(
    tmp_path: Path, hold: Callable[[QUClient], Awaitable[None]], *, soft: bool = False
) -> tuple[Exception | None, int]:
    """Increment ``OID`` under ``PATIENCE`` while another task of the same client holds it
    (under a patience of its own) for ``hold``: the update's failure (None: it completed)
    and the counter's value after.  ``soft``: patiences that run down without a completed
    call however many nodes are live (``bftfs.outcome.Patience``)."""
    async with open_cluster(tmp_path, clients=1, seed=5) as cl:
        c = await counting_client(cl, OID)
        holding = trio.Event()

        async def holder() -> None:
            with patience(PATIENCE, trio.current_time(), soft=soft):
                async with c._locked((OID,)):
                    holding.set()
                    await hold(c)

        failed: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await holding.wait()
            with patience(PATIENCE, trio.current_time(), soft=soft):
                try:
                    await c.update(OID, "counter.increment", 1)
                except Exception as e:  # noqa: BLE001 - the caller asserts on it
                    failed = e
        return failed, await c.query(OID, "counter.fetch")


async def test_waiting_behind_an_own_backoff_uses_up_no_patience(tmp_path: Path) -> None:
    async def long_backoff(_delay: float) -> None:
        await trio.sleep(1.5 * PATIENCE)

    async def contended(c: QUClient) -> None:
        await Attempt(c.th, random.Random(1), long_backoff, ()).back_off()

    assert await update_behind(tmp_path, contended) == (None, 2)


async def test_waiting_behind_a_silent_cluster_still_fails(tmp_path: Path) -> None:
    """The contract kept: the holder's rounds got no answer for its whole patience, so the
    waiter gets no patience of its own back and fails as soon as its own is gone.  (Soft
    patiences: the holder's sleep stands for unanswered rounds, while the nodes are in
    fact live; a default patience rightly waits for live nodes, issue 60.)"""

    async def unanswered(_c: QUClient) -> None:
        await trio.sleep(1.5 * PATIENCE)  # waiting on nodes that never answer

    failed, _ = await update_behind(tmp_path, unanswered, soft=True)  # applied or not
    assert failed is not None and "fewer than q" in str(failed)
