"""A node process that loses power in the middle of garbage collection (issue 16).

Lazy verification collects a block's old versions in the same LMDB transaction that
records the verification (``rw/collect.verified_step``).  Node 3 runs the
``power-cut-in-gc`` profile: in the third write transaction that deletes block versions it
ends (``os._exit``, no commit, no clean-up) right after the first delete, while a client
keeps overwriting files with a retention policy that keeps only the newest version.  Then:

1. its store, read directly while the process is dead, is whole: for every block, nothing
   lies below the recorded collection floor, the floor is never above the verified mark,
   and the block's newest version (as node 0 holds it) is there, except for the blocks of
   the one flush that was in flight when the power went;
2. the client's writes all completed without it (t = 1);
3. restarted without the profile, the node catches up, every file reads back as last
   written, and a scrub finds every node's fragment of every block intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

from bftfs import fsobjects as obj
from bftfs import local
from bftfs.connect import open_client
from bftfs.fs.scrub import scrub
from bftfs.fs.session import Session, open_protocol_clients, open_session
from bftfs.kv import KV
from bftfs.node.store import Store
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw import collect, replica
from bftfs.rw.schema import BLOCK_ID_SIZE, DB_VERIFIED, DB_VERSIONS, split_key
from bftfs.rw.scrub import BlockReport
from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.testing.processes import ProcessCluster

CUT = 3  # the node that loses power
BLOCK = 4096
BLOCKS_PER_FILE = 3
FILES = 6

#: Verify and collect at once: every overwrite leaves an old version to collect.
EAGER = VerificationPolicy(
    settle_seconds=0.0, idle_seconds=0.0, fallback_seconds=0.5, stream_seconds=0.0
)
KEEP_NEWEST = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=1)

#: Per block: versions hosted (newest first), collection floor, verified mark.
Blocks = dict[int, tuple[list[Timestamp], Timestamp, Timestamp]]


def _blocks(pc: ProcessCluster, i: int) -> Blocks:
    """Node ``i``'s blocks, read from its LMDB directly (LMDB lets a second process read
    while the node runs)."""
    store = Store(pc.config.node(i).data_dir / "lmdb", map_size=pc.config.map_size, durable=False)

    def read(kv: KV) -> Blocks:
        end = b"\xff" * (BLOCK_ID_SIZE + 1)
        blocks = {split_key(bytes(k))[0] for k, _ in kv.scan(DB_VERSIONS, b"", end)}
        # A block whose every version was collected still has its verified mark.
        blocks |= {int.from_bytes(bytes(k), "big") for k, _ in kv.scan(DB_VERIFIED, b"", end)}
        return {
            b: (collect.hosted_step(kv, b), replica.floor_of(kv, b), collect.verified_of(kv, b))
            for b in blocks
        }

    try:
        return store.read(read)
    finally:
        store.close()


def _content(rng: random.Random) -> bytes:
    return rng.randbytes(BLOCK * BLOCKS_PER_FILE)


async def _write(s: Session, name: bytes, data: bytes, *, create: bool) -> None:
    fs = s.fs
    if create:
        fh, _ = await fs.create(obj.ROOT, name, 0o644, 0, 0, os.O_WRONLY)
    else:
        fh = await fs.open((await fs.lookup(obj.ROOT, name)).ino, os.O_WRONLY)
    await fs.write(fh, 0, data)
    await fs.release(fh)


async def _overwrite_until_cut(pc: ProcessCluster, last: dict[bytes, bytes]) -> None:
    """Overwrite the files round after round until node ``CUT`` is gone."""
    rng = random.Random(16)
    async with open_session(pc.config, "client0") as s:
        for round_ in range(40):
            for k in range(FILES):
                name = f"f{k}".encode()
                last[name] = _content(rng)
                await _write(s, name, last[name], create=round_ == 0)
                if local.running_pid(pc.config.node(CUT)) is None:
                    return


async def _overwrite_all(pc: ProcessCluster, last: dict[bytes, bytes]) -> None:
    """One more round, which node ``CUT`` misses while it is down."""
    rng = random.Random(17)
    async with open_session(pc.config, "client0") as s:
        for name in list(last):
            last[name] = _content(rng)
            await _write(s, name, last[name], create=False)


async def _catch_up_done(pc: ProcessCluster) -> None:
    async with open_client(pc.config) as ep:
        with trio.fail_after(60):
            while True:
                progress = (await ep.call(CUT, "stats", None))["progress"]
                if all(
                    progress.get(p, {}).get("state") == "done" for p in ("qu.catchup", "rw.catchup")
                ):
                    return
                await trio.sleep(0.1)  # polling another process's progress


async def _read_back_and_scrub(pc: ProcessCluster, last: dict[bytes, bytes]) -> list[BlockReport]:
    async with open_session(pc.config, "client1") as s:
        for name, data in last.items():
            fh = await s.fs.open((await s.fs.lookup(obj.ROOT, name)).ino, os.O_RDONLY)
            assert await s.fs.read(fh, 0, len(data) + 1) == data, f"{name!r} reads back wrong"
            await s.fs.release(fh)
    async with open_protocol_clients(pc.config, "client1", trust_verified=False) as (qu, rw):
        return await scrub(qu, rw, pc.config.block_size)


@pytest.mark.slow
def test_power_cut_inside_garbage_collection_loses_nothing(tmp_path: Path) -> None:
    profile = ["--byzantine", "power-cut-in-gc"]
    with ProcessCluster(
        tmp_path / "c",
        map_size=1 << 28,
        block_size=BLOCK,
        inline_limit=0,
        verification=EAGER,
        retention=KEEP_NEWEST,
        node_args={CUT: profile},
    ) as pc:
        last: dict[bytes, bytes] = {}
        trio.run(_overwrite_until_cut, pc, last)
        assert local.running_pid(pc.config.node(CUT)) is None, "the power cut never came"
        stderr = local.stderr_path(pc.config.node(CUT)).read_text()  # written as the power goes
        assert "process ends inside a collection" in stderr

        at_cut = _blocks(pc, CUT)
        assert at_cut, "the node stored nothing before the cut"
        for block, (hosted, floor, mark) in at_cut.items():
            assert all(ts >= floor for ts in hosted), f"block {block:#x}: versions below the floor"
            assert floor <= mark, f"block {block:#x}: collected above its verified mark"
        assert any(floor > ZERO for _, floor, _ in at_cut.values()), "the test saw no collection"
        # The newest version of each block that any running node holds: node CUT may lack
        # it only for blocks of the flushes in flight around the cut (the one it
        # interrupted, and one before it whose version shared the lost transaction).
        newest: dict[int, Timestamp] = {}
        for i in range(pc.config.n):
            if i != CUT:
                for block, (hosted, _, _) in _blocks(pc, i).items():
                    if hosted:
                        newest[block] = max(newest.get(block, ZERO), hosted[0])
        assert len(newest) == FILES * BLOCKS_PER_FILE
        missing = [b for b, ts in newest.items() if ts not in at_cut.get(b, ([], ZERO, ZERO))[0]]
        assert len(missing) <= 2 * BLOCKS_PER_FILE, f"newest versions lost at the cut: {missing}"

        trio.run(_overwrite_all, pc, last)
        pc.node_args.pop(CUT)
        pc.start(CUT)
        trio.run(_catch_up_done, pc)
        reports = trio.run(_read_back_and_scrub, pc, last)
        damaged = [(r.block, r.repaired) for r in reports if r.repaired]
        assert not damaged, f"fragments missing or damaged after recovery: {damaged}"
