"""Tier 3: the background mover (issue 35; docs/membership.md, "Generations: the mover and
finishing").

Generation g is an in-process cluster of 6 nodes (t = b = 1), generation g + 1 one of 11
(t = b = 2) whose view names g as its previous generation (so its nodes take moved
versions).  A tree written in g (directories, inline and multi-block files, a sparse file,
a hard link, xattrs, a symlink; one file's attribute object moved beforehand by a client
touching it) is moved with :func:`~bftfs.fs.generations.mover.move_generation`, cut off after a few
objects and run again from its cursor; then a file system over g + 1's clients alone (no
router, no g) reads every file back byte for byte and lists every directory.  A run from a
new cursor finds everything there and copies nothing; a run on the completed cursor walks
nothing.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from t3_generation_router import BS, SIZES, Gens, qu_client, read, unmount, write

from bftfs.fs.filesystem import open_file_system
from bftfs.fs.generations import (
    GenerationalQU,
    MoveState,
    cursor_path,
    file_blocks,
    list_page,
    move_generation,
    start_state,
    union_page,
)
from bftfs.fsobjects import ROOT
from bftfs.rw.messages import block_id
from bftfs.testing.cluster import open_cluster

BIG = bytes(random.Random(7).randbytes(3 * BS + 500))
TOUCHED = bytes(random.Random(8).randbytes(2 * BS + 1))
SMALL = b"inline contents\n" * 4
SPARSE_TAIL = b"after a hole of two blocks"


async def tree(gens: Gens) -> dict[str, Any]:
    """Write the tree in g with a plain file system; what each path holds."""
    fs = await gens.plain_fs(0)
    a = (await fs.mkdir(ROOT, b"a", 0o755, 0, 0)).ino
    b = (await fs.mkdir(a, b"b", 0o750, 0, 0)).ino
    small = await write(fs, a, b"small", SMALL)
    await write(fs, b, b"big", BIG)
    touched = await write(fs, ROOT, b"touched", TOUCHED)
    linked = await write(fs, ROOT, b"linked", b"two names\n")
    await fs.link(linked, b, b"hard")
    await fs.symlink(ROOT, b"ln", b"a/small", 0, 0)
    await fs.setxattr(small, b"user.k", b"value")
    await fs.setxattr(a, b"user.d", b"on a directory")
    fh, attr = await fs.create(a, b"sparse", 0o600, 0, 0, os.O_RDWR)
    await fs.write(fh, 2 * BS, SPARSE_TAIL)
    await fs.release(fh)
    await unmount(fs)
    return {
        "files": {
            (a, b"small"): SMALL,
            (b, b"big"): BIG,
            (ROOT, b"touched"): TOUCHED,
            (ROOT, b"linked"): b"two names\n",
            (b, b"hard"): b"two names\n",
            (a, b"sparse"): bytes(2 * BS) + SPARSE_TAIL,
        },
        "dirs": {
            ROOT: [b"a", b"linked", b"ln", b"touched"],
            a: [b"b", b"small", b"sparse"],
            b: [b"big", b"hard"],
        },  # fmt: skip
        "small": small,
        "a": a,
        "linked": linked,
        "touched": touched,
    }


async def check_g1_alone(gens: Gens, want: dict[str, Any]) -> None:
    """A file system over g + 1's clients only reads the tree back."""
    fs = await gens.stack.enter_async_context(open_file_system(
        qu_client(gens.g1, 2, seed=2), await gens.rw(gens.g1, 2), gens.g1.config,
        clock_ns=gens.clock_ns, rng=random.Random(2),
    ))  # fmt: skip
    for ino, names in want["dirs"].items():
        got = sorted(n for n, _ in await fs.readdir(ino) if n not in (b".", b".."))
        assert got == names, (ino, got)
    for (parent, name), data in want["files"].items():
        assert await read(fs, (await fs.lookup(parent, name)).ino) == data, name
    assert await fs.readlink((await fs.lookup(ROOT, b"ln")).ino) == b"a/small"
    assert await fs.getxattr(want["small"], b"user.k") == b"value"
    assert await fs.getxattr(want["a"], b"user.d") == b"on a directory"
    assert (await fs.getattr(want["linked"])).nlink == 2
    assert (await fs.lookup(want["a"], b"b")).mode & 0o777 == 0o750


@asynccontextmanager
async def generations(tmp_path: Path) -> AsyncIterator[Gens]:
    """g, and g + 1 naming g as its previous generation (its nodes take moved versions)."""
    async with (
        open_cluster(tmp_path / "g", t=1, b=1, clients=4, **SIZES) as g,
        open_cluster(
            tmp_path / "g1", t=2, b=2, clients=4, seed=1, views=True, previous=g.config, **SIZES
        ) as g1,
        AsyncExitStack() as stack,
    ):
        yield Gens(g, g1, stack)


def test_the_mover_moves_a_tree_so_g1_alone_reads_it_and_resumes_after_a_cut(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with generations(tmp_path) as gens:
            g, g1 = gens.g, gens.g1
            want = await tree(gens)
            # A client touches one file first: its attribute object moves, its blocks not.
            fs1, _, _ = await gens.routed_fs(1)
            assert (await fs1.getattr(want["touched"])).size == len(TOUCHED)
            # The write leases the writer took lapse (the file systems' clock): the mover
            # waits for no lease (the router's wait is tested in t3_generation_router).
            gens.clock[0] += 3600 * 10**9

            lister = g.as_node(1)  # g's nodes are not frozen here: list as a node
            listing = functools.partial(list_page, lister, range(6), 5, limit=3)
            # The mover is client 3: every block it copies names another writer (client 0).
            new_rw, old_rw = await gens.rw(g1, 3), await gens.rw(g, 3)

            def router() -> GenerationalQU:
                return gens.router(3)

            path = cursor_path(tmp_path, 2)
            run = functools.partial(
                move_generation, new_rw=new_rw, old_rw=old_rw, list_objects=listing,
                path=path, default_bs=BS,
            )  # fmt: skip

            # Cut off after 4 objects: the cursor holds the pages finished.
            with trio.CancelScope() as cut:

                def stop(state: MoveState, walked: int, listed: int) -> None:
                    if walked >= 4:
                        cut.cancel()

                await run(router(), state=start_state(path, 1, 1), on_progress=stop)
            saved = MoveState.load(path)
            assert saved is not None and not saved.complete and saved.after is not None

            state = await run(router(), state=start_state(path, 1, 1))
            assert state.complete and MoveState.load(path) == state
            objects = state.objects
            assert objects["moved"] + objects["here"] == objects["walked"] == 9, state
            assert objects["here"] >= 2, state  # the root and the touched file
            # big: 4 blocks, touched: 3, sparse: 1 (its hole was never written).  Blocks the
            # cut run copied in the page it did not finish are found there on the rerun.
            blocks = state.blocks
            assert blocks["copied"] + blocks.get("present", 0) == 8, state
            assert 0 < state.bytes <= len(BIG) + len(TOUCHED) + len(SPARSE_TAIL), state

            await check_g1_alone(gens, want)

            second = router()
            again = await run(second, state=MoveState(1, 1), path=None)
            assert again.complete and again.objects.get("moved", 0) == 0, again
            # One Q/U operation in g + 1 per object already there: the state the router
            # found is the one the mover reads the file's blocks from (no second query).
            assert second.new.statistics().operations == again.objects["walked"] == 9
            assert again.blocks.get("copied", 0) == 0 and again.bytes == 0, again
            assert again.blocks["present"] == 8, again
            done = await run(router(), state=start_state(path, 1, 1))
            assert done == state  # complete: nothing walked

    trio.run(main)


def test_union_page_and_file_blocks() -> None:
    # Node 2 lists up to 9 with more to come: the page stops there for everyone.
    page, cut = union_page({0: ([1, 3], False), 1: ([1, 4, 12], False), 2: ([3, 9], True)})
    assert (page, cut) == ([1, 3, 4, 9], 9)
    assert union_page({0: ([], False), 1: ([5], False)}) == ([5], None)
    f = {"k": "f", "d": 7, "size": 10 * BS, "alloc": 3 * BS + 1, "w": [[0, 1], [2 * BS, 4 * BS]]}
    assert list(file_blocks(f, BS)) == [block_id(7, 0), block_id(7, 2), block_id(7, 3)]
    assert list(file_blocks({**f, "w": None}, BS)) == [block_id(7, k) for k in range(4)]
    assert list(file_blocks({**f, "i": b"x"}, BS)) == []
    two = [block_id(7, 0), block_id(7, 1)]
    assert list(file_blocks({**f, "bs": 2 * BS, "w": None}, BS)) == two
    # Ranges sharing a block name it once.
    assert list(file_blocks({**f, "w": [[0, 10], [20, 30], [BS, BS + 1]]}, BS)) == two[:1] + [
        block_id(7, 1)
    ]
    assert list(file_blocks({"k": "d"}, BS)) == []
