"""Moved block versions on the nodes (issue 35; docs/membership.md, "Generations: the mover
and finishing"), with in-process clusters of real nodes (TCP, LMDB): a PASIS write flagged
*moved*, at another writer's timestamp that no node hosts yet, is taken by the nodes of a
generation whose view names a previous one (a move runs), charged to the writer it names, and
refused ``unproven`` by nodes without a previous generation; its fragment is checked as
any write's.  Such nodes forget no given-back block while the move runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bftfs import erasure
from bftfs.ids import client_id
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw import collect, quota
from bftfs.rw.client import RWClient
from bftfs.rw.failures import WriteFailed
from bftfs.rw.lazy import Pick
from bftfs.rw.messages import BlockId
from bftfs.rw.timestamp import make_timestamp
from bftfs.testing.cluster import open_cluster

BLOCK = BlockId(0x7000)
DATA = b"a version generation g holds, written by client 1 long ago" * 20
#: The version's Time: well in the past, as a moved version's is.
OLD_TIME = 1_600_000_000_000_000_000


def test_a_moved_write_is_taken_only_by_a_generation_with_a_previous_one(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            open_cluster(tmp_path / "g", clients=2) as g,
            open_cluster(tmp_path / "g1", clients=2, views=True, previous=g.config, seed=1) as g1,
        ):
            writer = int(client_id(1))  # the version names client 1; client 0 moves it
            for cluster, takes in ((g1, True), (g, False)):
                cfg = cluster.config
                enc = erasure.encode(DATA, cfg.m, cfg.n)
                ts = make_timestamp(OLD_TIME, writer, enc.verifier)
                mover = RWClient(cluster.client(0), cfg)
                if not takes:
                    with pytest.raises(WriteFailed):
                        await mover.do_write(
                            BLOCK, ts, enc.fragments, enc.cross_checksum, moved=True
                        )
                    refused = sum(node.stats["rw.refused.unproven"] for node in cluster.nodes)
                    assert refused >= cfg.t + 1, refused  # (the write fails on t + 1)
                    assert (await mover.read_version(BLOCK)).absent
                    continue
                # A bad fragment is refused as for any write (node 0's, sent to it alone).
                bad = [bytes([enc.fragments[0][0] ^ 1]) + enc.fragments[0][1:], *enc.fragments[1:]]
                with pytest.raises(WriteFailed):
                    await mover.do_write(
                        BLOCK, ts, bad, enc.cross_checksum, targets=[0], moved=True
                    )
                assert cluster.nodes[0].stats["rw.refused.bad-fragment"] >= 1
                await mover.do_write(BLOCK, ts, enc.fragments, enc.cross_checksum, moved=True)
                got = await RWClient(cluster.client(1), cfg).read_version(BLOCK)
                assert (got.ts, got.data) == (ts, DATA)
                taken = [node.stats["rw.write.moved"] for node in cluster.nodes]
                assert sum(taken) >= cfg.n - cfg.t, taken
                # Charged to the writer the timestamp names, as in the old generation (and as
                # repairs are), not to the mover (client 0), whose own writes stay its own.
                for node in cluster.nodes:
                    if node.stats["rw.write.moved"]:
                        used = node.store.read(lambda kv: (quota.used(kv, int(client_id(0))),
                                                           quota.used(kv, writer)))  # fmt: skip
                        assert used[0] == 0 and used[1] > 0, used

    trio.run(main)


def test_a_generation_with_a_previous_one_forgets_no_given_back_block(tmp_path: Path) -> None:
    """A block given back in g + 1 (its lone empty version, verified everywhere, due) is
    not forgotten while the move runs: a reader finding nothing in g + 1 would read g's
    older contents (``node/rw_forgetter.py``)."""
    by_hand = VerificationPolicy(
        mode="lazy", settle_seconds=3600.0, fallback_seconds=3600.0, stream_seconds=0.0
    )
    retention = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, forget_seconds=0)

    async def main() -> None:
        async with (
            open_cluster(tmp_path / "g", clients=1) as g,
            open_cluster(
                tmp_path / "g1", clients=1, views=True, previous=g.config, seed=1,
                verification=by_hand, retention=retention,
            ) as g1,
        ):  # fmt: skip
            ts = await RWClient(g1.client(0), g1.config).write_block(BLOCK, b"")
            async with trio.open_nursery() as nursery:
                for node in g1.nodes:
                    nursery.start_soon(node.verifier.verify_wave, [Pick(BLOCK, "own")])
            stats = [node.stats for node in g1.nodes]
            with trio.fail_after(20):
                while not all(s["rw.forget.held"] or s["rw.forgotten"] for s in stats):  # noqa: ASYNC110 (counters have no event)
                    await trio.sleep(0.05)
            assert not any(s["rw.forgotten"] for s in stats)
            for node in g1.nodes:
                assert node.store.read(lambda kv: collect.hosted_step(kv, BLOCK)) == [ts]

    trio.run(main)
