"""Tier 3: two file-system clients contending on one name in one directory (issue 22).

Users saw a directory answer EIO forever within seconds of two clients looping
``open(j, O_CREAT|O_TRUNC|O_WRONLY)``, write, fsync, close, ``unlink`` on one name: the
directory's latest candidates (incomplete creates and removes, each naming a different
file) needed more than 8 objects to repair.  Here the same loop runs on the in-process
cluster without a kernel, for a fixed number of seeded iterations; no operation may fail
with EIO, and afterwards the directory is usable and holds what it should.  Deduction
now follows the seed's rule (only the latest incomplete multi-object candidate's objects
are needed) and decides skips behind pruned histories from proven links (docs/qu.md,
decisions 2 and 15).
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

import pytest
import trio
from fs_helpers import (
    CALL_PATIENCE,
    Env,
    backoff_past_the_patience,
    journal_until_contended,
    names,
    open_creat_trunc,
    run,
)

from bftfs.fs.errors import NotFound
from bftfs.fsobjects import ROOT


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.slow
def test_two_clients_create_truncate_unlink_one_name(tmp_path: Path, seed: int) -> None:
    iterations = 40

    async def body(env: Env) -> None:
        d = await env.fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        # Lost requests and replies leave creates and unlinks accepted at only some
        # servers: incomplete two-object candidates at the directory, each naming another
        # file (a client resends, but its contender may overtake it meanwhile).
        for f in env.cluster.faults:
            f.drop(0.05)

        async def loop(k: int) -> None:
            fs = env.fss[k]
            data = bytes([65 + k]) * 512
            for _ in range(iterations):
                fh = await open_creat_trunc(fs, d.ino, b"j")
                assert await fs.write(fh, 0, data) == 512
                await fs.fsync(fh)
                await fs.release(fh)
                with suppress(NotFound):  # the other client may have unlinked it first
                    await fs.unlink(d.ino, b"j")

        async with trio.open_nursery() as n:
            for k in range(2):
                n.start_soon(loop, k)
        for f in env.cluster.faults:
            f.clear()
        # The directory is usable from both clients and holds exactly what it should.
        for k in range(2):
            assert await names(env.fss[k], d.ino) == []
        fh = await open_creat_trunc(env.fss[0], d.ino, b"j")
        await env.fss[0].write(fh, 0, b"last")
        await env.fss[0].release(fh)
        a = await env.fss[1].lookup(d.ino, b"j")
        fh = await env.fss[1].open(a.ino, os.O_RDONLY)
        assert await env.fss[1].read(fh, 0, 100) == b"last"
        await env.fss[1].release(fh)
        assert await names(env.fss[1], d.ino) == [b"j"]

    run(tmp_path, body, seed=seed)


@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
@pytest.mark.slow
def test_two_clients_creating_and_removing_their_own_names_lose_nothing(
    tmp_path: Path, seed: int
) -> None:
    """Each client creates and removes names only it uses, in one directory, with lost
    messages making them contend on the directory: every create the client was told
    succeeded is there for its own unlink, and at the end exactly the names whose last
    operation was a create remain, on both clients."""
    iterations = 60

    async def body(env: Env) -> None:
        d = await env.fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        for f in env.cluster.faults:
            f.drop(0.05)

        async def loop(k: int) -> None:
            fs = env.fss[k]
            for i in range(iterations):
                name = b"%c%d" % (65 + k, i % 7)
                fh = await open_creat_trunc(fs, d.ino, name)
                await fs.write(fh, 0, b"x" * (i % 3) * 100)
                await fs.release(fh)
                if i % 2:
                    await fs.unlink(d.ino, name)  # NotFound here: an acknowledged create lost

        async with trio.open_nursery() as n:
            for k in range(2):
                n.start_soon(loop, k)
        for f in env.cluster.faults:
            f.clear()
        last = {i % 7: i for i in range(iterations)}
        expect = sorted(
            b"%c%d" % (65 + k, j) for k in range(2) for j, i in last.items() if i % 2 == 0
        )
        for k in range(2):
            assert await names(env.fss[k], d.ino) == expect

    run(tmp_path, body, seed=seed)


@pytest.mark.slow
def test_journal_loop_with_contention_costing_more_than_the_patience_never_fails(
    tmp_path: Path,
) -> None:
    """Issue 31, item 11: two mounts on one journal name answered EIO ("fewer than q
    servers answer") with all six nodes up: each system call has a patience (the mount's
    ``timeo``), and the backoffs of a contended repair, and rounds cut short once enough
    replies were in, used it up, so the next rounds got no time and came back empty.
    Contention is amplified here: every Q/U backoff lasts longer than the whole patience
    each call gets (as the FUSE layer gives it).  The loop runs until both clients have
    backed off for contention several times; no call may fail."""

    async def body(env: Env) -> None:
        d = await env.fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        for f in env.cluster.faults:  # requests overtake each other: the clients contend
            f.reorder(0.02)
        await journal_until_contended(env.fss, d.ino, CALL_PATIENCE)
        for f in env.cluster.faults:
            f.clear()
        for k in range(2):
            assert await names(env.fss[k], d.ino) == []

    run(
        tmp_path,
        body,
        qu_options={"sleep": backoff_past_the_patience},
        fs_options={"write_behind": True},  # as a mount runs (its creates go with the close)
    )
