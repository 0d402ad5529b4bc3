"""Tier 5: lazy verification, NOTIFY cooperation and garbage collection on the in-process
cluster (real transport, real LMDB; issue 16).

Nodes verify in the background (node/rw_verifier.py): a poisonous write by a Byzantine
client is found and discarded and never returned; NOTIFYs from a lying node cannot make a
poisonous version count as verified or a good one discarded; a read after verification
skips the regeneration; garbage collection keeps exactly what the retention policy says
and a reader racing it never sees wrong data; budgets force verification with no idle
time; a node restarted with unverified versions finds them again.

Waiting is on the verifiers' ``settled`` events, never on sleeps.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rw_helpers import rw_cluster

from bftfs import erasure
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw import collect, replica
from bftfs.rw.lazy import COOPERATIVE_SLACK, POISONOUS, VERIFIED, Pick, responsible
from bftfs.rw.messages import (
    KIND_NOTIFY,
    KIND_READ_LATEST,
    KIND_READ_PREV,
    BlockId,
    Notify,
    ReadRequest,
)
from bftfs.rw.schema import DB_VERSIONS, version_key
from bftfs.rw.timestamp import Timestamp, make_timestamp
from bftfs.rw.verify import validate_fragment

#: Verify at once, never by fallback: every node that is not responsible for a block must
#: learn about it from NOTIFYs (cooperation is what the tests see).  No streams: a test's
#: steady writes would otherwise count as one and put verification off until they stop.
EAGER = VerificationPolicy(
    settle_seconds=0.0, idle_seconds=0.0, fallback_seconds=3600.0, stream_seconds=0.0
)
KEEP_ALL = RetentionPolicy(keep_seconds=3600.0, keep_versions=2)


async def settled(cluster: Any, *, within: float = 30.0) -> None:
    """Until every running node's verifier has an empty backlog at the same moment."""
    with trio.fail_after(within):
        while True:
            verifiers = [
                n.verifier for i, n in enumerate(cluster.nodes) if i not in cluster.crashed
            ]
            pending = [v for v in verifiers if v is None or not v.settled.is_set()]
            if not pending:
                return
            if pending[0] is None:
                await trio.lowlevel.checkpoint()
            else:
                await pending[0].settled.wait()


async def until(cluster: Any, i: int, cond: Any, *, within: float = 30.0) -> None:
    """Until ``cond()`` holds, re-checked whenever node ``i``'s verifier makes progress."""
    with trio.fail_after(within):
        while not cond():
            verifier = cluster.nodes[i].verifier
            if verifier is None:
                await trio.lowlevel.checkpoint()
            else:
                await verifier.changed.wait()


def hosted(cluster: Any, i: int, block: int) -> list[Timestamp]:
    return cluster.nodes[i].store.read(lambda kv: collect.hosted_step(kv, block))


def flagged(cluster: Any, i: int, block: int, ts: Timestamp) -> bool:
    return cluster.nodes[i].store.read(lambda kv: replica.is_verified(kv, block, ts))


def poisonous(cfg: Any, a: bytes, b: bytes) -> tuple[tuple[bytes, ...], bytes]:
    """Fragments of two values under one self-consistent cross checksum."""
    ea, eb = erasure.encode(a, cfg.m, cfg.n), erasure.encode(b, cfg.m, cfg.n)
    half = cfg.n // 2
    mixed = ea.fragments[:half] + eb.fragments[half:]
    return mixed, erasure.make_cross_checksum(len(a), mixed)


async def write_poison(evil: Any, cfg: Any, block: int) -> Timestamp:
    frags, cc = poisonous(cfg, b"A" * 100, b"B" * 100)
    time_ = await evil.read_timestamp(BlockId(block))
    stamp = make_timestamp(time_, evil.endpoint.pid, erasure.verifier_of(cc))
    await evil.do_write(BlockId(block), stamp, frags, cc)  # every node accepts its part
    return stamp


async def test_a_poisonous_write_is_discarded_in_the_background_and_reads_skip_regeneration(
    tmp_path: Path,
) -> None:
    async with rw_cluster(tmp_path, clients=3, verification=EAGER, retention=KEEP_ALL) as (
        cl,
        (evil, writer, reader),
    ):
        cfg = cl.config
        good = await writer.write_block(7, b"good")
        poison = await write_poison(evil, cfg, 7)
        assert all(poison in hosted(cl, i, 7) for i in range(cfg.n))
        await settled(cl)
        for i in range(cfg.n):
            assert poison not in hosted(cl, i, 7), f"node {i} kept the poisonous version"
            assert flagged(cl, i, 7, good), f"node {i} did not flag the good version"
        found = sum(cl.nodes[i].progress["rw.verify"]["poisonous"] for i in range(cfg.n))
        assert found == cfg.b + 1  # exactly the responsible nodes verified it
        assert await reader.read_block(7) == b"good"
        st = reader.statistics()
        # Never shown the poisonous version, and no regeneration needed for the good one.
        assert (st["poisonous"], st["verified_skips"]) == (0, 1)
        # Only the responsible nodes read: the others trusted b + 1 NOTIFYs.
        readers = [i for i in range(cfg.n) if cl.nodes[i].progress["rw.verify"]["verified"]]
        assert readers == sorted(responsible(7, cfg.n, cfg.b))


async def test_a_wave_of_blocks_shares_frames_and_discards_poison_among_them(
    tmp_path: Path,
) -> None:
    """Blocks due together are verified as a wave (``wave_blocks``): their READs to a peer
    share ``rw.batch`` frames, and each block's outcome is what verifying it alone gives
    (good versions flagged everywhere, a poisonous one among them discarded)."""
    # Due once the node has been idle for a second: the writes below come faster than
    # that, so every block is due at the same moment.
    wave = VerificationPolicy(
        settle_seconds=0.0, idle_seconds=1.0, fallback_seconds=3600.0, stream_seconds=0.0
    )
    async with rw_cluster(tmp_path, clients=2, verification=wave, retention=KEEP_ALL) as (
        cl,
        (evil, writer),
    ):
        cfg = cl.config
        blocks = [cfg.n * k for k in range(12)]  # all led by node 0 (and node 1)
        good = {k: await writer.write_block(k, b"v%d" % k) for k in blocks}
        poison = await write_poison(evil, cfg, blocks[5])
        await settled(cl)
        for k in blocks:
            for i in range(cfg.n):
                assert flagged(cl, i, k, good[k]), f"node {i}: block {k} not flagged"
        assert all(poison not in hosted(cl, i, blocks[5]) for i in range(cfg.n))
        for i in responsible(0, cfg.n, cfg.b):
            verifier = cl.nodes[i].verifier
            assert verifier.progress["verified"] == len(blocks)
            batcher = verifier._wave_client.batcher
            # Some frame carried the READs of several blocks (one per block: no wave).
            assert batcher.items > batcher.batches > 0, (batcher.items, batcher.batches)
        # The others trusted b + 1 NOTIFYs: nobody else read.
        others = set(range(cfg.n)) - set(responsible(0, cfg.n, cfg.b))
        assert all(cl.nodes[i].progress["rw.verify"]["verified"] == 0 for i in others)


async def test_a_lying_node_cannot_flag_poison_or_discard_good_data(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path, clients=3, verification=EAGER, retention=KEEP_ALL) as (
        cl,
        (evil, writer, reader),
    ):
        cfg = cl.config
        block = 12  # responsible: 0 and 1 (n = 6, b = 1)
        liar = 4
        good = await writer.write_block(block, b"good")
        poison = await write_poison(evil, cfg, block)
        lies = Notify(
            (
                (BlockId(block), poison, VERIFIED),
                (BlockId(block), good, POISONOUS),
            )
        ).to_wire()
        for peer in range(cfg.n):
            if peer != liar:
                await cl.nodes[liar].endpoint.call(peer, KIND_NOTIFY, lies)
        await settled(cl)
        for i in range(cfg.n):
            if i == liar:
                continue
            assert good in hosted(cl, i, block), f"node {i} discarded the good version"
            assert not flagged(cl, i, block, poison)
            assert flagged(cl, i, block, good)
        assert await reader.read_block(block) == b"good"


async def test_withheld_notifies_cost_a_fallback_verification_not_safety(tmp_path: Path) -> None:
    # Fallback groups (rw/lazy.fallback_delay): nodes 2 and 3 after 2 s, nodes 4 and 5
    # after 4 s, which leaves 2 s for 2 and 3 to verify and tell the others.
    policy = VerificationPolicy(
        settle_seconds=0.0, idle_seconds=0.0, fallback_seconds=2.0, stream_seconds=0.0
    )
    async with rw_cluster(tmp_path, clients=1, verification=policy, retention=KEEP_ALL) as (
        cl,
        (writer,),
    ):
        cfg = cl.config
        block = 18  # responsible: 0 and 1
        for peer in range(cfg.n):
            if peer != 0:
                cl.faults[peer].byzantine(KIND_NOTIFY, drop_notify)  # node 0 is muted
        good = await writer.write_block(block, b"v1")
        await settled(cl)
        for i in range(cfg.n):
            assert flagged(cl, i, block, good)
        # Nodes 2 and 3 heard only node 1: after the fallback delay at least one of them
        # verified the block itself (the other may take its NOTIFY with node 1's, when it
        # comes first: a busy machine's make test saw node 2 do so).  Each of nodes 4 and
        # 5, later in the ring, trusted the NOTIFYs or, if its own fallback came first on
        # a slow machine, verified.
        progress = [cl.nodes[i].progress["rw.verify"] for i in range(cfg.n)]
        assert progress[2]["verified"] + progress[3]["verified"] >= 1, progress
        for i in (4, 5):
            assert progress[i]["verified"] + progress[i]["notify_applied"] >= 1, progress


async def drop_notify(ctx: Any, payload: Any, honest: Any) -> Any:
    """Accept NOTIFYs from node 0 and ignore them (from the others: honest)."""
    if int(ctx.sender) == 0:
        return {}
    return await honest(ctx, payload)


async def test_retention_keeps_exactly_what_the_policy_says(tmp_path: Path) -> None:
    short = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=2)
    async with rw_cluster(tmp_path, clients=1, verification=EAGER, retention=short) as (
        cl,
        (writer,),
    ):
        cfg = cl.config
        stamps = [await writer.write_block(3, f"v{k}".encode()) for k in range(6)]
        await settled(cl)
        for i in range(cfg.n):
            assert hosted(cl, i, 3) == stamps[:-3:-1], f"node {i}"
        assert await writer.read_block(3) == b"v5"


async def test_young_versions_are_kept_whatever_their_number(tmp_path: Path) -> None:
    young = RetentionPolicy(keep_seconds=3600.0, keep_versions=1)
    async with rw_cluster(tmp_path, clients=1, verification=EAGER, retention=young) as (
        cl,
        (writer,),
    ):
        stamps = [await writer.write_block(3, f"v{k}".encode()) for k in range(5)]
        await settled(cl)
        for i in range(cl.config.n):
            assert hosted(cl, i, 3) == stamps[::-1]
            assert flagged(cl, i, 3, stamps[-1])


async def test_readers_racing_garbage_collection_see_only_written_values(tmp_path: Path) -> None:
    short = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=1)
    async with rw_cluster(tmp_path, clients=2, verification=EAGER, retention=short) as (
        cl,
        (writer, reader),
    ):
        rng = random.Random(5)
        written: list[bytes] = []
        seen: list[bytes] = []

        async def write_all() -> None:
            for k in range(40):
                value = f"value-{k}-{rng.randrange(10**6)}".encode()
                written.append(value)
                await writer.write_block(9, value)

        async def read_until_done(done: trio.Event) -> None:
            while not done.is_set():
                seen.append(await reader.read_block(9))

        done = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(read_until_done, done)
            await write_all()
            done.set()
        await settled(cl)
        assert seen and all(v in written for v in seen if v)
        positions = [written.index(v) for v in seen if v]
        assert positions == sorted(positions)  # one reader never goes back in time
        assert await reader.read_block(9) == written[-1]
        collected = sum(cl.nodes[i].stats["rw.gc.collected"] for i in range(cl.config.n))
        assert collected > 0
        for i in range(cl.config.n):
            assert len(hosted(cl, i, 9)) <= 2  # the newest, and one written meanwhile


async def test_a_budget_forces_verification_without_idle_time(tmp_path: Path) -> None:
    never_idle = VerificationPolicy(
        settle_seconds=3600.0,
        idle_seconds=3600.0,
        fallback_seconds=3600.0,
        per_client_block=2,
        per_client=4,
        stream_seconds=0.0,  # the budget outside streams (streams: the next test)
    )
    short = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=1)
    async with rw_cluster(tmp_path, clients=1, verification=never_idle, retention=short) as (
        cl,
        (writer,),
    ):
        cfg = cl.config
        for k in range(6):
            await writer.write_block(30, f"x{k}".encode())
        # Three versions by one client on one block exceed per_client_block = 2.
        for i in responsible(30, cfg.n, cfg.b):
            progress = cl.nodes[i].progress["rw.verify"]
            await until(cl, i, lambda p=progress: p["verified"] > 0)
            assert cl.nodes[i].progress["rw.verify"]["forced"] >= 1
        # A steady writer over many blocks: the backlog stays within the budget, twice
        # it on a node waiting for the responsible nodes' NOTIFYs (COOPERATIVE_SLACK).
        for k in range(40):
            await writer.write_block(100 + k, b"y")
            for i in range(cfg.n):
                held = cl.nodes[i].verifier.backlog.by_client(writer.endpoint.pid)
                assert held <= COOPERATIVE_SLACK * never_idle.per_client + 1


async def test_a_stream_puts_verification_off_within_its_byte_budget(tmp_path: Path) -> None:
    """A client that keeps writing is a stream: nodes leave its blocks for later (no
    verification in the gaps), beyond ``per_client`` versions, but never beyond
    ``stream_bytes``; once the stream stops they catch up."""
    streams = VerificationPolicy(
        settle_seconds=0.0,
        idle_seconds=0.0,
        fallback_seconds=3600.0,
        per_client_block=8,
        per_client=4,
        stream_seconds=0.001,  # any two requests a write apart are a stream
        stream_idle_seconds=3600.0,  # and it never ends by itself
        stream_bytes=20_000,
    )
    async with rw_cluster(tmp_path, clients=1, verification=streams, retention=KEEP_ALL) as (
        cl,
        (writer,),
    ):
        cfg = cl.config
        data = bytes(range(256)) * 12  # 3 KiB: a fragment of about 1 KiB
        frag = erasure.fragment_size(len(data), cfg.m)
        for k in range(40):
            await writer.write_block(200 + k, data)
        client = writer.endpoint.pid
        for i in range(cfg.n):
            v = cl.nodes[i].verifier
            held = v.backlog.bytes_by_client(client)
            # More than per_client versions were left unverified: the stream's budget...
            assert v.backlog.by_client(client) > streams.per_client
            # ...is bytes, and binds (one write's fragment over it at most, then forced;
            # twice the budget on a node waiting for the responsible nodes' NOTIFYs).
            assert held <= COOPERATIVE_SLACK * streams.stream_bytes + frag + 1024
            assert v.progress["streaming"]
        # The stream stops (a gap of stream_idle_seconds; here, the test's policy swapped
        # for one with streams off): the nodes catch up.
        for i in range(cfg.n):
            v = cl.nodes[i].verifier
            v.policy = v.backlog.policy = EAGER
            v.wake()
        await settled(cl)
        assert await writer.read_block(239) == data


async def test_a_restarted_node_finds_its_unverified_versions_again(tmp_path: Path) -> None:
    off_for_now = VerificationPolicy(
        settle_seconds=0.0, idle_seconds=3600.0, fallback_seconds=3600.0
    )
    async with rw_cluster(
        tmp_path, clients=1, verification=off_for_now, retention=KEEP_ALL, durable=True
    ) as (cl, (writer,)):
        stamps = [await writer.write_block(b, b"data") for b in (0, 6, 12)]
        # A write returns at N - t acknowledgements: node 0's may still be on its way.
        await until(cl, 0, lambda: cl.nodes[0].progress["rw.verify"]["backlog_versions"] == 3)
        cl.crash(0)
        await cl.wait_stopped(0)
        await cl.recover(0)
        await until(cl, 0, lambda: cl.nodes[0].progress["rw.verify"]["state"] == "running")
        assert cl.nodes[0].progress["rw.verify"]["backlog_versions"] == 3
        assert not any(flagged(cl, 0, b, s) for b, s in zip((0, 6, 12), stamps, strict=True))


async def test_versions_kept_for_their_age_go_once_old_without_another_write(
    tmp_path: Path,
) -> None:
    a_second = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=1.0, keep_versions=1)
    async with rw_cluster(tmp_path, clients=1, verification=EAGER, retention=a_second) as (
        cl,
        (writer,),
    ):
        stamps = [await writer.write_block(4, f"v{k}".encode()) for k in range(3)]
        await settled(cl)
        assert hosted(cl, 0, 4) == stamps[::-1]  # all younger than a second
        for i in range(cl.config.n):  # no write comes: the verifier looks again by itself
            await until(cl, i, lambda i=i: hosted(cl, i, 4) == [stamps[-1]], within=10)
        assert await writer.read_block(4) == b"v2"


#: Verify only when a test says so (``Verifier.verify_wave``): no idle time, no fallback.
ON_DEMAND = VerificationPolicy(
    settle_seconds=0.0, idle_seconds=3600.0, fallback_seconds=3600.0, stream_seconds=0.0
)


def count_data_reads(cl: Any) -> Counter[tuple[int, int]]:
    """READ_LATEST / READ_PREV requests asking for a fragment, by ``(sender, block)``, as
    the nodes serve them (batched or not)."""
    served: Counter[tuple[int, int]] = Counter()

    async def counting(ctx: Any, payload: Any, honest: Any) -> Any:
        if payload.get("d"):
            served[(int(ctx.sender), int.from_bytes(payload["b"], "big"))] += 1
        return await honest(ctx, payload)

    for f in cl.faults:
        f.byzantine(KIND_READ_LATEST, counting)
        f.byzantine(KIND_READ_PREV, counting)
    return served


async def on_every_node(cl: Any, block: int, stamp: Timestamp) -> None:
    """Until every node stored ``stamp`` (a write returns at ``N - t`` acknowledgements)."""
    for i in range(cl.config.n):
        await until(cl, i, lambda i=i: stamp in hosted(cl, i, block))


async def test_a_node_holding_a_data_fragment_reads_its_own_and_m_minus_1_from_peers(
    tmp_path: Path,
) -> None:
    """The local path (issue 34): a verifying node whose fragment is a systematic one takes
    it from its own store and asks its peers for ``m - 1``; a parity node asks for ``m``."""
    async with rw_cluster(tmp_path, clients=1, verification=ON_DEMAND, retention=KEEP_ALL) as (
        cl,
        (writer,),
    ):
        cfg = cl.config
        assert cfg.m >= 2 and cfg.m + 1 < cfg.n  # block 0: data nodes, block m: parity
        served = count_data_reads(cl)
        data = bytes(range(256)) * 12
        for block in (0, cfg.m):
            stamp = await writer.write_block(block, data)
            await on_every_node(cl, block, stamp)
            for i in responsible(block, cfg.n, cfg.b):
                await cl.nodes[i].verifier.verify_wave([Pick(block, "own")])
                assert flagged(cl, i, block, stamp), f"node {i}: block {block} not flagged"
        for i in responsible(0, cfg.n, cfg.b):
            assert i < cfg.m
            assert cl.nodes[i].stats["rw.verify.local_fragments"] == 1
            assert served[(i, 0)] == cfg.m - 1, (i, served)
        for i in responsible(cfg.m, cfg.n, cfg.b):
            assert i >= cfg.m
            assert cl.nodes[i].stats["rw.verify.local_fragments"] == 0
            assert served[(i, cfg.m)] == cfg.m, (i, served)
        assert not any(cl.nodes[i].stats["rw.verify.local_rejected"] for i in range(cfg.n))
        assert await writer.read_block(0) == data


@pytest.mark.expected_logs("bftfs.rw.read", match="own reply failed its checks")
@pytest.mark.expected_logs("bftfs.node", match="was damaged here; replaced")
async def test_a_damaged_own_fragment_is_caught_not_used_and_healed(tmp_path: Path) -> None:
    """Bit rot in the verifying node's own store: its fragment fails its check like a
    peer's corrupt one, so the version is verified from the peers' fragments (not judged
    poisonous from a damaged one, nor flagged on the strength of it) and the copy is
    replaced by the regenerated fragment."""
    async with rw_cluster(tmp_path, clients=1, verification=ON_DEMAND, retention=KEEP_ALL) as (
        cl,
        (writer,),
    ):
        cfg = cl.config
        block, me = 0, 0  # node 0 holds data fragment 0 and is responsible for block 0
        served = count_data_reads(cl)
        data = bytes(range(256)) * 12
        stamp = await writer.write_block(block, data)
        await on_every_node(cl, block, stamp)
        key = version_key(block, stamp)
        node = cl.nodes[me]
        good = node.store.read(lambda kv: bytes(kv.get(DB_VERSIONS, key)))

        def rot(kv: Any) -> None:
            kv.put(DB_VERSIONS, key, good[:-1] + bytes([good[-1] ^ 0x01]))

        await node.store.write(rot)
        await node.verifier.verify_wave([Pick(block, "own")])
        assert node.stats["rw.verify.local_rejected"] == 1
        assert node.stats["rw.verify.local_fragments"] == 0
        assert node.findings.peer_faults[(me, "corrupt")] == 1
        # Verified from m fragments of the peers, not from the damaged one: a damaged
        # fragment taken for good would have made the version look poisonous.
        assert served[(me, block)] == cfg.m, served
        assert node.progress["rw.verify"]["poisonous"] == 0
        assert hosted(cl, me, block) == [stamp]
        assert flagged(cl, me, block, stamp)
        # And the copy was healed from the regenerated fragment.
        assert node.stats["rw.verify.local_healed"] == 1
        healed = node.store.read(lambda kv: bytes(kv.get(DB_VERSIONS, key)))
        assert healed[1:] == good[1:]  # the flags byte aside (verified since)
        again = node.store.read(
            lambda kv: replica.read_step(kv, ReadRequest(BlockId(block), data=True))
        )
        assert again.fragment is not None and again.cross_checksum is not None
        assert validate_fragment(stamp, again.cross_checksum, again.fragment, me, cfg.n)
        assert await writer.read_block(block) == data


async def test_a_poisonous_first_write_is_discarded_too(tmp_path: Path) -> None:
    """A block whose only version is poisonous reads as never written, and the verifiers
    discard that version (before, a read reaching the initial value dropped the poisonous
    versions it had met, and the version stayed until retention gave it up)."""
    async with rw_cluster(tmp_path, clients=2, verification=EAGER, retention=KEEP_ALL) as (
        cl,
        (evil, reader),
    ):
        cfg = cl.config
        poison = await write_poison(evil, cfg, 24)
        await settled(cl)
        for i in range(cfg.n):
            assert poison not in hosted(cl, i, 24), f"node {i} kept the poisonous version"
        found = sum(cl.nodes[i].progress["rw.verify"]["poisonous"] for i in range(cfg.n))
        assert found == cfg.b + 1
        assert await reader.read_block(24) == b""


async def test_a_node_outside_a_readers_quorum_holds_when_b_plus_one_peers_do(
    tmp_path: Path,
) -> None:
    """HOLDs (issue 34): a client reading a big object its nodes have left to verify makes
    them hold idle-time verification back, and they tell their peers; the node the reader
    never asks holds too once ``b + 1`` of them have said so, and waits for the stream's
    quiet as they do (the ``b + 1`` rule itself: ``t1_rw_lazy``)."""
    from bftfs.rw.lazy import BIG_OBJECT_BLOCKS
    from bftfs.rw.messages import block_id

    holding = VerificationPolicy(
        settle_seconds=3600.0,  # nothing is verified while the test runs
        idle_seconds=0.0,
        fallback_seconds=3600.0,
        stream_seconds=0.001,
        stream_idle_seconds=3600.0,  # a hold lasts the whole test
    )
    async with rw_cluster(tmp_path, clients=1, verification=holding, retention=KEEP_ALL) as (
        cl,
        (client,),
    ):
        cfg = cl.config
        outside = cfg.n - 1
        data = bytes(range(256)) * 12
        blocks = [block_id(7, k) for k in range(BIG_OBJECT_BLOCKS + 2)]
        for block in blocks:
            stamp = await client.write_block(block, data)
            await on_every_node(cl, block, stamp)
        lone = cl.nodes[outside].verifier
        assert lone.progress["peer_holds"] == 0 and lone.backlog_read == -math.inf
        # The client reads from every node but the last one.
        for i in range(outside):
            request = ReadRequest(blocks[i], data=False).to_wire()
            await client.endpoint.call(cfg.node_ids[i], KIND_READ_LATEST, request)
            assert cl.nodes[i].verifier.progress["read_holds"] == 1
        await until(cl, outside, lambda: lone.progress["peer_holds"] > 0)
        await trio.testing.wait_all_tasks_blocked()  # every holding node's sender has run
        assert all(cl.nodes[i].verifier.progress["holds_sent"] == 1 for i in range(outside))
        # As if the node had seen a read itself: verification waits for the stream's quiet.
        now = trio.current_time()
        assert now - lone.backlog_read < 5.0
        assert lone.stream(now).idle_after == holding.stream_idle_seconds
