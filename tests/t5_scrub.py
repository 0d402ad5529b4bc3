"""Tier 5: ``bftfs verify`` (scrub and repair, issue 16) on the in-process cluster.

A fragment damaged on one node's disk and a version missing on another are found by
comparing every node's fragment with the one regenerated from ``m`` valid ones, and are
written again at the same timestamp; a second scrub then finds every fragment intact.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from fs_helpers import RW_OPTIONS, qu_client

from bftfs.fs.filesystem import open_file_system
from bftfs.fs.scrub import scrub
from bftfs.fsobjects import ROOT
from bftfs.policy import VerificationPolicy
from bftfs.rw import collect, replica, scrubstep
from bftfs.rw.client import open_rw_client
from bftfs.rw.messages import block_id
from bftfs.rw.schema import DB_VERSIONS, version_key
from bftfs.rw.scrub import summarize
from bftfs.testing.cluster import open_cluster

BS = 4096


# The rotted fragment is reported by the node that held it, when the scrub replaces it.
@pytest.mark.expected_logs("bftfs.node", "WARNING", match=r"was damaged here; replaced$")
async def test_scrub_rewrites_damaged_and_missing_fragments(tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, clients=2, block_size=BS, inline_limit=0) as cluster,
        AsyncExitStack() as stack,
    ):
        cfg = cluster.config
        rw = await stack.enter_async_context(open_rw_client(cluster.client(0), cfg, **RW_OPTIONS))
        fs = await stack.enter_async_context(
            open_file_system(qu_client(cluster, 0), rw, cfg, rng=random.Random(3))
        )
        data = random.Random(3).randbytes(3 * BS)
        fh, attrs = await fs.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, data)
        await fs.release(fh)
        d = (await qu_client(cluster, 1).query(attrs.ino, "fs.stat"))["d"]
        b0, b1 = block_id(d, 0), block_id(d, 1)

        # Bit rot on node 2 (block 0), a lost version on node 3 (block 1).
        def latest(node: int, block: int) -> replica.Timestamp:
            return cluster.nodes[node].store.read(lambda kv: collect.hosted_step(kv, block))[0]

        ts0, ts1 = latest(2, b0), latest(3, b1)

        def rot(kv: object) -> None:
            raw = bytearray(kv.get(DB_VERSIONS, version_key(b0, ts0)))  # type: ignore[attr-defined]
            raw[-1] ^= 0xFF
            kv.put(DB_VERSIONS, version_key(b0, ts0), bytes(raw))  # type: ignore[attr-defined]

        await cluster.nodes[2].store.write(rot)
        await cluster.nodes[3].store.write(lambda kv: kv.delete(DB_VERSIONS, version_key(b1, ts1)))

        rw_scrub = await stack.enter_async_context(
            open_rw_client(cluster.client(1), cfg, trust_verified=False, **RW_OPTIONS)
        )
        seen: list[int] = []
        reports = await scrub(
            qu_client(cluster, 1), rw_scrub, BS, lambda done, known, r: seen.append(done)
        )
        by_block = {r.block: r for r in reports}
        assert by_block[b0].repaired == [2] and by_block[b1].repaired == [3], reports
        assert by_block[block_id(d, 2)].repaired == []
        assert seen == [1, 2, 3]
        assert cluster.nodes[3].store.read(lambda kv: replica.has_version(kv, b1, ts1))
        assert cluster.nodes[2].stats["rw.write.healed"] == 1

        again = summarize(await scrub(qu_client(cluster, 1), rw_scrub, BS))
        n = cfg.n
        assert again == {
            "blocks": 3,
            "checked": 3,
            "fragments_intact": 3 * n,
            "fragments_repaired": 0,
            "fragments_unreachable": 0,
            "blocks_repaired": 0,
            "repaired_by_node": {},
        }
        fh = await fs.open(attrs.ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 3 * BS) == data
        await fs.release(fh)


async def _until(cond: Callable[[], bool]) -> None:
    """Poll the node's own background task's progress under a deadline."""
    with trio.fail_after(30):
        while True:
            if cond():
                return
            await trio.sleep(0.05)


# Each pass that finds damage says so; the old damaged version is left, so every pass does.
@pytest.mark.expected_logs("bftfs.node", "WARNING", match=r"^node 2: scrub found damage: ")
async def test_a_node_scrubs_itself_and_rewrites_its_damaged_fragment(tmp_path: Path) -> None:
    """The in-node scrub (node/rw_scrubber.py): node 2's fragment of block 0 rots; with a
    short ``scrub_seconds`` node 2 finds it by itself (no client asks) and rewrites it from
    the others; an older damaged version of block 1 (overwritten since) is counted and left."""
    policy = VerificationPolicy(mode="off", scrub_seconds=0.2, idle_seconds=0.0)
    async with (
        open_cluster(
            tmp_path, clients=1, block_size=BS, inline_limit=0, verification=policy
        ) as cluster,
        AsyncExitStack() as stack,
    ):
        cfg = cluster.config
        rw = await stack.enter_async_context(open_rw_client(cluster.client(0), cfg, **RW_OPTIONS))
        await rw.write_block(100, b"block zero" * 100)
        await rw.write_block(101, b"old one" * 100)
        node = cluster.nodes[2]

        def latest(block: int) -> replica.Timestamp:
            return node.store.read(lambda kv: collect.hosted_step(kv, block))[0]

        ts0, old1 = latest(100), latest(101)
        await rw.write_block(101, b"new one" * 100)

        def rot(kv: object, key: bytes) -> None:
            raw = bytearray(kv.get(DB_VERSIONS, key))  # type: ignore[attr-defined]
            raw[-1] ^= 0xFF
            kv.put(DB_VERSIONS, key, bytes(raw))  # type: ignore[attr-defined]

        await node.store.write(lambda kv: rot(kv, version_key(100, ts0)))
        await node.store.write(lambda kv: rot(kv, version_key(101, old1)))
        await _until(lambda: node.stats["rw.scrub.repaired"] >= 1)
        after = node.progress["rw.scrub"]["passes"]
        await _until(lambda: node.progress["rw.scrub"]["passes"] >= after + 2)  # a whole pass
        assert node.stats["rw.scrub.repaired"] == 1 and node.stats["rw.scrub.left"] >= 1
        assert node.progress["rw.scrub"]["damaged"] == 1  # the last pass: only the old one
        assert node.store.read(
            lambda kv: scrubstep.scrub_step(kv, None, 1000, node=2, n=cfg.n)
        ).damaged == [(101, old1)]
        assert await rw.read_block(100) == b"block zero" * 100
        # What the scrub found stays, as the node's findings in its store (issue 31).
        await _until(lambda: node.findings.totals[(2, "repaired")] == 1)
        stored = node.store.read(lambda kv: dict(kv.scan("findings", b"", b"\xff")))
        assert int.from_bytes(stored[b"2:repaired"], "big") == 1
        assert int.from_bytes(stored[b"2:damaged"], "big") >= 2
        assert node.progress["findings"]["2"]["repaired"] == 1
