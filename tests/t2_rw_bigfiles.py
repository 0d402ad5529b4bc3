"""Tier 2: the PASIS client's big-file path (issue 34), over real TCP and LMDB (the
in-process cluster).

A verified block is read from its systematic fragments without decoding, and a corrupt
fragment among them is still refused.

A client holds a bounded backlog for a node that does not answer.  A write returns after
``N - t`` acknowledgements; its request to the last node goes on in the background,
holding its fragment until that node answers or the call times out.  A
node that never answers (here: one that drops everything) would make a long stream of
writes hold every fragment written meanwhile - the mount daemon grew to 1.4 GB for a
1 GiB file with one node down.  The batcher now fails a request at once when its node has
``MAX_PENDING`` unanswered, which the quorum call takes as a faulty node's answer.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio
from rw_helpers import make_crashed, rw_cluster

from bftfs.net.frames import DEFAULT_MAX_FRAME
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw import replica
from bftfs.rw.batch import MAX_PENDING
from bftfs.rw.client import DEFAULT_CONCURRENCY
from bftfs.rw.schema import DB_SCRUB
from bftfs.testing.byzantine.rw import make_byzantine

#: Verify at once (no streams, no idle wait), keep every version.
EAGER = VerificationPolicy(
    settle_seconds=0.0, idle_seconds=0.0, fallback_seconds=3600.0, stream_seconds=0.0
)
KEEP_ALL = RetentionPolicy(keep_seconds=3600.0, keep_versions=2)


async def test_a_verified_block_is_read_from_its_systematic_fragments_not_a_corrupt_one(
    tmp_path: Path,
) -> None:
    async with rw_cluster(tmp_path, clients=2, verification=EAGER, retention=KEEP_ALL) as (
        cl,
        (writer, reader),
    ):
        n = cl.config.n
        data = random.Random(6).randbytes(5000)
        ts = await writer.write_block(3, data)

        with trio.fail_after(30):  # lazy verification flags it on every node
            for i in range(n):
                node = cl.nodes[i]
                while not node.store.read(lambda kv: replica.is_verified(kv, 3, ts)):
                    await node.verifier.changed.wait()
        assert await reader.read_block(3) == data
        st = reader.statistics()
        # Flagged by b + 1 replies: no regeneration, and the data fragments are joined.
        assert (st["verified_skips"], st["systematic_reads"], st["poisonous"]) == (1, 1, 0)
        # Node 0 now corrupts every fragment it serves: its fragment fails its check against
        # the cross checksum, the read decodes from others' and still returns the block.
        make_byzantine(cl, 0, "corrupt-fragment")
        assert await reader.read_block(3) == data
        st = reader.statistics()
        assert (st["verified_skips"], st["systematic_reads"]) == (2, 1)
        assert reader.faults[(0, "corrupt")] == 1
        # Node 0 is now asked for data last: the next read takes nodes 1-3's fragments
        # (decoded) without a refused fragment and its extra round.
        rounds = st["rounds"]
        assert await reader.read_block(3) == data
        st = reader.statistics()
        assert reader.faults[(0, "corrupt")] == 1 and st["rounds"] == rounds + 1


async def test_a_silent_node_holds_at_most_max_pending_requests(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path, clients=1, seed=5) as (cluster, (rw,)):
        make_crashed(cluster, 0)
        batcher = rw.batcher
        assert batcher is not None
        outstanding = {"now": 0, "most": 0}
        submit = batcher.submit

        def counting(
            node: Any, kind: str, payload: Any, done: Any, trouble: Any, **how: Any
        ) -> None:
            if node != 0:
                submit(node, kind, payload, done, trouble, **how)
                return
            outstanding["now"] += 1
            outstanding["most"] = max(outstanding["most"], outstanding["now"])

            def answered(outcome: Any) -> None:
                outstanding["now"] -= 1
                done(outcome)

            submit(node, kind, payload, answered, trouble, **how)

        batcher.submit = counting  # type: ignore[method-assign]
        blocks = {k: bytes([k % 251]) * 1024 for k in range(3 * MAX_PENDING)}
        written = await rw.write_blocks(blocks)
        assert len(written) == len(blocks)  # every write complete without node 0
        # (plus, for one scheduler pass, the refused ones of a wave until their flush)
        assert MAX_PENDING <= outstanding["most"] <= MAX_PENDING + DEFAULT_CONCURRENCY
        assert batcher.backlogged > 0
        for k in (0, len(blocks) - 1):
            assert await rw.read_block(k) == blocks[k]


async def test_a_wave_of_writes_is_one_durable_commit_on_each_node(tmp_path: Path) -> None:
    """``write_blocks`` sends a wave's fragments to a node in one ``rw.batch`` frame, and
    the node stores them in one LMDB transaction with one sync (issue 34: one commit per
    wave, not per fragment)."""
    off = VerificationPolicy(mode="off")  # no verification commits in between
    slow_resend = {"resend_after": 10.0}  # a frame is not sent again while a sync runs
    async with rw_cluster(
        tmp_path, clients=1, durable=True, verification=off, endpoint_options=slow_resend
    ) as (cl, (rw,)):
        wave = DEFAULT_CONCURRENCY // 2
        # Each node's scrubber records when it started waiting, one commit of its own at
        # start: let it land first, or it may count as the wave's (6 runs in make test).
        if cl.config.verification.scrub_seconds > 0:
            with trio.fail_after(30):
                while any(  # noqa: ASYNC110 (the store has no event to wait on)
                    node.store.read(lambda kv: kv.get(DB_SCRUB, b"since")) is None
                    for node in cl.nodes
                ):
                    await trio.sleep(0.01)
        before = [node.store.commits for node in cl.nodes]
        written = [node.store.batched_writes for node in cl.nodes]
        got = [node.server.stats["req.rw.batch"] for node in cl.nodes]
        blocks = {k: random.Random(k).randbytes(3000) for k in range(wave)}
        await rw.write_blocks(blocks)
        # Every node stored them (the write waits for N - t; the last may still be storing).
        with trio.fail_after(30):
            while any(  # noqa: ASYNC110 (the store has no event to wait on)
                node.store.batched_writes - w < wave
                for node, w in zip(cl.nodes, written, strict=True)
            ):
                await trio.sleep(0.01)
        # The client sent each node one frame with the wave's 16 fragments ...
        st = rw.statistics()
        assert (st["batches"], st["batched_requests"]) == (cl.config.n, cl.config.n * wave)
        # ... and each node stored what a frame carried in one transaction (a frame the
        # client sent again, its answer being late behind a sync, is one more).
        commits = [node.store.commits - c for node, c in zip(cl.nodes, before, strict=True)]
        frames = [
            node.server.stats["req.rw.batch"] - f for node, f in zip(cl.nodes, got, strict=True)
        ]
        assert commits == frames and min(commits) == 1


async def test_a_batch_never_outgrows_the_frame_limit(tmp_path: Path) -> None:
    """A hundred 256 KiB blocks written in one wave and read back at once: each node's
    fragments (8.7 MB) do not fit one frame (8 MiB), so the batcher cuts them into
    batches of at most ``rw.batch.MAX_BATCH_BYTES`` (issue 34).  Before, the wave's request frame
    was refused by every node and the reads' reply frames by the client: the write
    failed, and every read with it."""
    off = VerificationPolicy(mode="off")
    size = 256 * 1024
    async with rw_cluster(tmp_path, clients=1, verification=off, big_block_size=size) as (
        cl,
        (rw,),
    ):
        count = 100
        rnd = random.Random(34)
        blocks = {k: rnd.randbytes(size) for k in range(count)}
        assert count * size // cl.config.m > DEFAULT_MAX_FRAME
        with trio.fail_after(60):
            await rw.write_blocks(blocks, concurrency=2 * count)  # one wave
            st = rw.statistics()
            assert st["batches"] >= 2 * cl.config.n  # at least two batches per node
            assert await rw.read_blocks(list(blocks), concurrency=count) == blocks


async def test_a_silent_node_holds_at_most_max_pending_bytes(tmp_path: Path) -> None:
    """The backlog for a node that does not answer is bounded in bytes too: with bigger
    blocks each unanswered request holds a bigger fragment (issue 34).  Here the limit
    is lowered to 1 MiB so that 64 KiB blocks (fragments of 21.8 KB) reach it well
    before the 256 requests of ``MAX_PENDING``."""
    async with rw_cluster(tmp_path, clients=1, seed=7) as (cluster, (rw,)):
        make_crashed(cluster, 0)
        batcher = rw.batcher
        assert batcher is not None
        limit = 1024 * 1024
        batcher.max_pending_bytes = limit
        held = {"now": 0, "most": 0}
        submit = batcher.submit

        def counting(
            node: Any, kind: str, payload: Any, done: Any, trouble: Any, **how: Any
        ) -> None:
            if node != 0:
                submit(node, kind, payload, done, trouble, **how)
                return
            size = len(payload.get("f", b""))
            held["now"] += size
            held["most"] = max(held["most"], held["now"])

            def answered(outcome: Any) -> None:
                held["now"] -= size
                done(outcome)

            submit(node, kind, payload, answered, trouble, **how)

        batcher.submit = counting  # type: ignore[method-assign]
        size = cluster.config.block_size
        blocks = {k: bytes([k % 251]) * size for k in range(200)}
        written = await rw.write_blocks(blocks)
        assert len(written) == len(blocks)  # every write complete without node 0
        fragment = -(-size // cluster.config.m)
        # (plus, for one scheduler pass, the refused ones of a wave until their flush)
        assert held["most"] <= limit + DEFAULT_CONCURRENCY * fragment
        assert held["most"] < len(blocks) * fragment // 2
        assert batcher.backlogged > 0


async def test_requests_over_the_limit_to_an_answering_node_wait_for_room(
    tmp_path: Path,
) -> None:
    """Only a silent node has requests over ``max_pending`` failed at once.  Nodes that
    answer, only more slowly than they are asked (a small-block file's read-ahead had
    256 reads unanswered at every node), keep the extra requests waiting for room: failed,
    they made the read that needed a block fail on every node (CI at stop 42)."""
    async with rw_cluster(tmp_path, clients=1, seed=9) as (_cluster, (rw,)):
        batcher = rw.batcher
        assert batcher is not None
        blocks = {k: bytes([k % 251]) * 1024 for k in range(64)}
        assert len(await rw.write_blocks(blocks)) == len(blocks)  # every node has answered
        batcher.max_pending = 4
        assert await rw.read_blocks(list(blocks), concurrency=len(blocks)) == blocks
        assert batcher.backlogged == 0


async def test_a_prepared_encoding_is_used_only_by_its_writer_for_its_data(
    tmp_path: Path,
) -> None:
    """``Writer.prepare`` (encode-ahead, ``fs/files/encodeahead.py``): ``write_blocks`` sends a
    block's prepared encoding only when this very writer made it of this very data object;
    otherwise it encodes the block itself, so what is stored is always what was given."""
    async with rw_cluster(tmp_path, clients=2) as (_cl, (one, two)):
        rng = random.Random(34)
        first, second, third = (rng.randbytes(9000) for _ in range(3))
        sealed = bytearray(b"x" * 9000)
        p = await one.prepare(1, first, before=lambda d: sealed)
        assert p.data is sealed  # ``before`` (the seal) ran, and its output was encoded
        used = one.statistics()["prepared_used"]
        await one.write_blocks({1: sealed}, prepared={1: p})
        assert one.statistics()["prepared_used"] == used + 1
        assert await two.read_block(1) == bytes(sealed)
        # Another object with other bytes: encoded again, the stored bytes its own.
        p = await one.prepare(2, second)
        await one.write_blocks({2: third}, prepared={2: p})
        assert one.statistics()["prepared_used"] == used + 1
        assert await two.read_block(2) == third
        # Another writer's encoding (another generation's N and m, say): encoded again.
        p = await two.prepare(3, second)
        await one.write_blocks({3: second}, prepared={3: p})
        assert one.statistics()["prepared_used"] == used + 1
        assert await two.read_block(3) == second
