"""Tier 3: a file-system call waiting for another task of its mount to finish its update
of the same object keeps its patience while that task backs off
(``Meta._one_update_per_object`` over ``qu.client.ObjectLock``; issue 39), on the
in-process cluster.

A mount holds each object for one update at a time.  A call queued behind a task of its
own mount that backed off for contention (``Meta.back_off`` uses up none of that task's
patience) spent its own patience waiting and then had no time for its rounds: "fewer than
q servers answer (3 rounds in a row; 0 answered)" with every node up.
"""

from __future__ import annotations

from pathlib import Path

import trio
from fs_helpers import fs_env, names

from bftfs.fsobjects import ROOT
from bftfs.outcome import patience, paused

#: Each call's patience (a mount's timeo, short); the holder backs off 1.5 times it.
PATIENCE = 0.5


def test_a_call_behind_its_own_mounts_backoff_uses_up_no_patience(tmp_path: Path) -> None:
    async def main() -> None:
        async with fs_env(tmp_path, clients=1, seed=4) as env:
            fs = env.fs
            d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
            holding = trio.Event()

            async def contended_update() -> None:
                """Between two attempts of an update of ``d`` a lease or another client
                refused: it holds ``d`` and backs off (``Meta.back_off``)."""
                with patience(PATIENCE, trio.current_time()):
                    async with fs.meta._one_update_per_object([d.ino]):
                        holding.set()
                        await trio.sleep(1.5 * PATIENCE)
                        paused(1.5 * PATIENCE)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(contended_update)
                await holding.wait()
                with patience(PATIENCE, trio.current_time()):
                    await fs.mkdir(d.ino, b"e", 0o755, 0, 0)
            assert await names(fs, d.ino) == [b"e"]

    trio.run(main)
