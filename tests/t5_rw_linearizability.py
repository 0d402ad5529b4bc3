"""Concurrent readers and writers on a few shared blocks, checked for linearizability
(seed L792-794) with the register checker, over seeded random schedules: random operation
mixes, random link reordering and duplication into every node, and a Byzantine node.

Also the garbage-collection race of seed L1566-1574, made deterministic: a read that must
walk back below a write that completes, and is collected behind, while the read waits.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
from rw_helpers import rw_cluster

from bftfs import erasure
from bftfs.rw import collect
from bftfs.rw.client import RWClient
from bftfs.rw.messages import KIND_READ_PREV, BlockId
from bftfs.rw.timestamp import make_timestamp
from bftfs.testing.byzantine.rw import BEHAVIOURS, make_byzantine
from bftfs.testing.cluster import Cluster
from bftfs.testing.linearizability import Recorder, check


async def random_workload(
    cluster: Cluster, rws: list[RWClient], rng: random.Random, *, ops: int, blocks: int
) -> Recorder:
    """Every client runs ``ops`` random reads and writes on ``blocks`` shared blocks."""
    rec = Recorder(clock=trio.current_time)

    async def client(k: int, rw: RWClient, seed: int) -> None:
        crng = random.Random(seed)
        for j in range(ops):
            block = crng.randrange(blocks)
            if crng.random() < 0.5:
                value = b"c%d-op%d" % (k, j)
                with rec.write(block, value, client=k):
                    await rw.write_block(block, value)
            else:
                with rec.read(block, client=k) as box:
                    box.append(await rw.read_block(block))

    async with trio.open_nursery() as nursery:
        for k, rw in enumerate(rws):
            nursery.start_soon(client, k, rw, rng.getrandbits(32))
    return rec


def run_schedule(tmp_path: Path, seed: int, *, byzantine: bool, ops: int, **config: Any) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        async with rw_cluster(tmp_path, clients=4, seed=seed, **config) as (cluster, rws):
            for f in cluster.faults:
                f.reorder(0.003).duplicate(0.05)
            if byzantine:
                make_byzantine(
                    cluster, rng.randrange(cluster.config.n), rng.choice(list(BEHAVIOURS))
                )
            rec = await random_workload(cluster, rws, rng, ops=ops, blocks=3)
            verdict = check(rec.ops, initial=b"")
            assert verdict, f"seed {seed}: {verdict.reason}"
            assert sum(1 for op in rec.ops if op.kind == "read") > 0

    trio.run(main)


@pytest.mark.parametrize("seed", range(6))
def test_random_schedules_are_linearizable(tmp_path: Path, seed: int) -> None:
    run_schedule(tmp_path, seed, byzantine=seed % 2 == 1, ops=12)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6, 36))
def test_many_random_schedules_are_linearizable(tmp_path: Path, seed: int) -> None:
    config = {"t": 2, "b": 2} if seed % 3 == 0 else {}
    run_schedule(tmp_path, seed, byzantine=True, ops=16, **config)


async def test_history_walk_restarts_when_collection_races_the_read(tmp_path: Path) -> None:
    """Seed L1566-1574: the read judges the newest candidates incomplete; while it asks for
    older history, a new write completes and every node collects below it; the read finds
    what it looked for gone, restarts, and returns the new write."""
    async with rw_cluster(tmp_path, clients=3) as (cluster, (reader, writer, partial)):
        cfg = cluster.config
        block = BlockId(9)
        await writer.write_block(block, b"old complete")
        # Nodes 0, 1 and 2 each receive ten failed writes of their own: their bounded
        # histories (8) end above "old complete", so the reader must fetch more.
        for i in range(3):
            for k in range(10):
                enc = erasure.encode(b"failed %d/%d" % (i, k), cfg.m, cfg.n)
                time_ = await partial.read_timestamp(block)
                stamp = make_timestamp(time_, partial.endpoint.pid, enc.verifier)
                await partial.do_write(block, stamp, enc.fragments, enc.cross_checksum, targets=[i])
        raced = trio.Event()

        async def race_then_answer(ctx: Any, payload: Any, honest: Any) -> Any:
            if not raced.is_set():
                raced.set()
                stamp = await writer.write_block(block, b"new complete")
                for node in cluster.nodes:
                    await node.store.write(lambda kv: collect.collect_step(kv, block, stamp))
            return await honest(ctx, payload)

        for i in range(3):
            cluster.faults[i].byzantine(KIND_READ_PREV, race_then_answer)
        assert await reader.read_block(block) == b"new complete"
        stats = reader.statistics()
        assert raced.is_set() and stats["restarts"] == 1 and stats["history_fetches"] >= 2


async def test_deep_history_without_races_needs_fetches_only(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path, clients=2) as (cluster, (reader, partial)):
        cfg = cluster.config
        block = BlockId(5)
        await reader.write_block(block, b"survivor")
        for i in range(3):
            for k in range(12):
                enc = erasure.encode(b"failed %d/%d" % (i, k), cfg.m, cfg.n)
                time_ = await partial.read_timestamp(block)
                stamp = make_timestamp(time_, partial.endpoint.pid, enc.verifier)
                await partial.do_write(block, stamp, enc.fragments, enc.cross_checksum, targets=[i])
        assert await reader.read_block(block) == b"survivor"
        stats = reader.statistics()
        assert stats["history_fetches"] >= 2 and stats["restarts"] == 0
