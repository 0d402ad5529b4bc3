"""Per-client limits on the in-process cluster (issue 18): a client with a valid key that
floods writes cannot fill a node beyond its quota while another client still writes; a
client over quota removes files, the nodes collect their blocks, and it writes again; the
accounting is the same after a node restarts; a client flooding requests cannot starve
another client's; nodes talking to nodes are never limited.

No wall-clock assertions: outcomes, counts and the nodes' own bookkeeping (checked against
a recomputation from the stored versions, ``rw.quota.audit``).  Waiting for background
collection is a condition re-checked at each step of the nodes' verifiers, under a
deadline.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import RW_OPTIONS, fs_env
from t5_qu_tombstone import until as polled
from t5_rw_lazy import EAGER, until

from bftfs import accounting
from bftfs.fs.errors import NoAttr, OverQuota
from bftfs.fsobjects import ROOT
from bftfs.ids import NodeId, client_id
from bftfs.net.errors import TransportError
from bftfs.node.service import Node
from bftfs.outcome import QuotaExceeded
from bftfs.policy import LimitsPolicy, RetentionPolicy
from bftfs.qu import schema
from bftfs.rw import quota
from bftfs.rw.client import open_rw_client
from bftfs.rw.messages import KIND_TIME, BlockId, TimeRequest
from bftfs.testing.cluster import open_cluster

BS = 4096
MAP = 64 * 1024 * 1024
#: About 80 versions of a 4 KiB block per client per node (each ~1.6 KB stored).
SMALL_QUOTA = LimitsPolicy(quota_fraction=0.002)
FLOODER, OTHER = int(client_id(0)), int(client_id(1))
#: Blocks a flooder tries: about five times what its quota holds.
ATTEMPTS = 400


def usage(node: Node, owner: int) -> int:
    """The node's charge total for ``owner``, after checking it against its versions."""
    totals, orphans = node.store.read(quota.audit)
    stored = node.store.read(quota.usages)
    assert orphans == 0 and totals == stored, (totals, stored, orphans)
    return stored.get(owner, 0)


async def test_a_flooding_writer_stops_at_its_quota_and_another_client_still_writes(
    tmp_path: Path,
) -> None:
    async with (
        open_cluster(tmp_path, block_size=BS, map_size=MAP, limits=SMALL_QUOTA) as cl,
        open_rw_client(cl.client(0), cl.config, **RW_OPTIONS) as flooder,
        open_rw_client(cl.client(1), cl.config, **RW_OPTIONS) as other,
    ):
        limit = cl.config.limits.quota_bytes(MAP)
        rng = random.Random(18)
        written = 0
        with pytest.raises(QuotaExceeded):
            for block in range(ATTEMPTS):
                await flooder.write_block(block, rng.randbytes(BS))
                written += 1
        assert 0 < written < ATTEMPTS
        for node in cl.nodes:
            assert usage(node, FLOODER) <= limit, f"node {node.id} beyond the quota"
        refused = [n.stats["rw.refused.quota"] for n in cl.nodes]
        assert sum(r > 0 for r in refused) > cl.config.b, refused
        # Its next write is refused again: the quota is not a one-off.
        with pytest.raises(QuotaExceeded):
            await flooder.write_block(20_000, rng.randbytes(BS))
        # The other client writes and reads back, untouched by the flooder's use.
        data = {100_000 + k: rng.randbytes(BS) for k in range(20)}
        for block, value in data.items():
            await other.write_block(block, value)
        for block, value in data.items():
            assert await other.read_block(block) == value
        assert all(usage(node, OTHER) > 0 for node in cl.nodes)
        status = cl.nodes[0].statistics()["limits"]
        assert status["quota_refused"] == cl.nodes[0].stats["rw.refused.quota"]
        assert status["principals"][str(FLOODER)]["stored_bytes"] == usage(cl.nodes[0], FLOODER)


def meta_usage(node: Node, owner: int) -> int:
    """The node's Q/U charge total for ``owner``, after checking every charge against the
    records stored (none left over, none missing)."""
    totals, orphans, unaccounted = node.store.read(schema.audit)
    stored = node.store.read(accounting.QU.usages)
    assert (orphans, unaccounted) == (0, 0) and totals == stored, (orphans, unaccounted)
    return stored.get(owner, 0)


XATTR = 2048


async def test_a_metadata_flooder_gets_edquot_another_client_still_creates(
    tmp_path: Path,
) -> None:
    """Big xattrs until EDQUOT (Q/U state only: no block is written), on one quota with
    its blocks; the refused update leaves every node at the state before it; the other
    client creates files; once the flooder removed its files and the nodes pruned them,
    it creates again."""
    async with fs_env(
        tmp_path,
        map_size=MAP,
        retention=RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.5, keep_versions=1),
        limits=SMALL_QUOTA,
    ) as env:
        fs, other, cl = env.fss[0], env.fss[1], env.cluster
        limit = cl.config.limits.quota_bytes(MAP)
        rng = random.Random(18)
        d = (await fs.mkdir(ROOT, b"flood", 0o755, 0, 0)).ino
        done: dict[int, list[bytes]] = {}
        refused: tuple[int, bytes] | None = None
        with pytest.raises(OverQuota) as caught:
            for i in range(limit // XATTR):
                fh, attr = await fs.create(d, f"f{i}".encode(), 0o644, 0, 0, os.O_RDWR)
                await fs.release(fh)
                done[attr.ino] = []
                for k in range(8):
                    refused = (attr.ino, f"user.x{k}".encode())
                    await fs.setxattr(attr.ino, refused[1], rng.randbytes(XATTR))
                    done[attr.ino].append(refused[1])
                    refused = None
        assert caught.value.errno == errno.EDQUOT and sum(map(len, done.values())) > 4
        stored = [meta_usage(node, FLOODER) for node in cl.nodes]
        # Beyond the quota by at most the one update that crossed it (its version, with the
        # state's small parts again, and its stored request).
        assert all(limit // 2 < s <= limit + 4 * XATTR for s in stored), (stored, limit)
        assert sum(n.stats["qu.refused.quota"] > 0 for n in cl.nodes) > cl.config.b
        if refused is not None:  # a setxattr (not a create) was refused: nothing of it
            ino, name = refused
            with pytest.raises(NoAttr):
                await other.getxattr(ino, name)
            assert sorted(await other.listxattr(ino)) == sorted(done[ino])
            newest = {
                n.store.read(lambda kv, o=ino: schema.iter_versions(kv, o)[-1].state)
                for n in cl.nodes
            }
            assert len(newest) == 1  # the same state on every node
        # Not a one-off: the quota still binds.  Pruning (0.5 s retention) may give back a
        # little meanwhile, so growth is refused again within a few more updates (each
        # setxattr adds XATTR bytes; it took len(done) files to reach the quota).
        last = next(iter(reversed(done)))
        with pytest.raises(OverQuota):
            for k in range(64):
                await fs.setxattr(last, b"user.more%d" % k, rng.randbytes(XATTR))
        # The other client, charged apart, still creates and writes small files.
        for i in range(10):
            fh, _ = await other.create(ROOT, f"o{i}".encode(), 0o644, 0, 0, os.O_RDWR)
            await other.write(fh, 0, b"still here %d" % i)
            await other.release(fh)
        assert all(meta_usage(node, OTHER) > 0 for node in cl.nodes)
        limits_status = cl.nodes[0].statistics()["limits"]
        flooder = limits_status["principals"][str(FLOODER)]
        assert flooder["meta_bytes"] == meta_usage(cl.nodes[0], FLOODER)  # no await between
        # Removing is never refused; pruning and tombstones give the charges back.
        for i in range(len(done)):
            await fs.unlink(d, f"f{i}".encode())
        await polled(
            lambda: all(
                meta_usage(n, FLOODER) < s // 2 for n, s in zip(cl.nodes, stored, strict=True)
            ),
            within=60.0,
        )
        fh, attr = await fs.create(d, b"again", 0o644, 0, 0, os.O_RDWR)
        await fs.setxattr(attr.ino, b"user.x", rng.randbytes(XATTR))
        await fs.release(fh)


def _newest(kv: Any, oid: int) -> bytes | None:
    return schema.iter_versions(kv, oid)[-1].state


async def test_a_client_over_quota_removes_files_and_writes_again(tmp_path: Path) -> None:
    async with fs_env(
        tmp_path,
        block_size=BS,
        inline_limit=0,
        map_size=MAP,
        verification=EAGER,
        retention=RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=1),
        limits=SMALL_QUOTA,
    ) as env:
        fs, cl = env.fs, env.cluster
        rng = random.Random(7)
        names: list[bytes] = []
        with pytest.raises(OverQuota) as caught:
            for i in range(ATTEMPTS // 8):
                name = f"f{i}".encode()
                fh, _ = await fs.create(ROOT, name, 0o644, 0, 0, os.O_RDWR)
                names.append(name)
                await fs.write(fh, 0, rng.randbytes(8 * BS))
                await fs.release(fh)
        assert caught.value.errno == errno.EDQUOT
        assert 1 < len(names) < ATTEMPTS // 8
        # The other client is not over its quota.
        fh, _ = await env.fss[1].create(ROOT, b"other", 0o644, 0, 0, os.O_RDWR)
        await env.fss[1].write(fh, 0, rng.randbytes(8 * BS))
        await env.fss[1].release(fh)
        full = [usage(node, FLOODER) for node in cl.nodes]
        # Removing is always allowed (metadata, then empty versions over the blocks).
        for name in names:
            await fs.unlink(ROOT, name)
        assert fs.reclaim_failed == 0 and fs.reclaimed_blocks > 0
        # The nodes verify the empty versions and collect what is below them.  What stays
        # charged: the empty versions themselves, and the refused file's partial write
        # until verification gives up on it (EAGER's fallback is an hour away for blocks
        # whose responsible nodes refused it): 25-27% of the peak in runs that left three
        # or four such blocks on a node (a bound of a quarter failed one run in six).
        for i, node in enumerate(cl.nodes):  # re-checked at each step of its verifier
            try:
                await until(
                    cl, i, lambda n=node, f=full[i]: usage(n, FLOODER) < f // 3, within=60.0
                )
            except trio.TooSlowError:
                verifier = node.verifier
                progress = verifier.progress if verifier is not None else None
                raise AssertionError(
                    f"node {i}: flooder's usage {usage(node, FLOODER)} of {full[i]} after 60 s"
                    f" (a third expected);"
                    f" backlog {len(verifier.backlog) if verifier else None};"
                    f" progress {progress}"
                ) from None
        fh, _ = await fs.create(ROOT, b"again", 0o644, 0, 0, os.O_RDWR)
        data = rng.randbytes(8 * BS)
        await fs.write(fh, 0, data)
        await fs.release(fh)
        fh = await fs.open(await _ino(fs, b"again"), os.O_RDONLY)
        assert await fs.read(fh, 0, 8 * BS) == data
        await fs.release(fh)


async def _ino(fs: Any, name: bytes) -> int:
    return int((await fs.lookup(ROOT, name)).ino)


async def test_quota_accounting_survives_a_node_restart(tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, block_size=BS, map_size=MAP, limits=SMALL_QUOTA) as cl,
        open_rw_client(cl.client(0), cl.config, **RW_OPTIONS) as writer,
    ):
        limit = cl.config.limits.quota_bytes(MAP)
        rng = random.Random(3)
        for block in range(30):
            await writer.write_block(block, rng.randbytes(BS))
        before = usage(cl.nodes[0], FLOODER)
        assert before > 0
        cl.crash(0)
        await cl.recover(0)
        assert usage(cl.nodes[0], FLOODER) == before
        # The restarted node still counts what it held: it refuses at the same total.
        with pytest.raises(QuotaExceeded):
            for block in range(30, ATTEMPTS):
                await writer.write_block(block, rng.randbytes(BS))
        assert cl.nodes[0].stats["rw.refused.quota"] > 0
        assert before < usage(cl.nodes[0], FLOODER) <= limit


FLOOD = 400


async def test_a_flooding_client_cannot_starve_another_clients_requests(tmp_path: Path) -> None:
    limits = LimitsPolicy(requests_per_second=5.0, burst_seconds=4.0, max_inflight=4)
    async with open_cluster(tmp_path, limits=limits) as cl:
        flooder, other = cl.client(0), cl.client(1)
        answered = {"flood": 0}
        req = TimeRequest(BlockId(7)).to_wire()
        bucket = limits.requests_per_second * limits.burst_seconds
        burst_spent = trio.Event()

        async def flood_one() -> None:
            try:
                await flooder.call(NodeId(0), KIND_TIME, req)
            except TransportError:
                return  # timed out behind the throttle: fine for a flooder
            answered["flood"] += 1
            if answered["flood"] >= bucket:
                burst_spent.set()

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(FLOOD):
                nursery.start_soon(flood_one)
            node = cl.nodes[0]
            with trio.fail_after(30):
                await burst_spent.wait()  # the flooder has had its burst: it is held now
            for _ in range(10):
                await other.call(NodeId(0), KIND_TIME, req)
            elapsed = trio.current_time() - start
            got = answered["flood"]
            nursery.cancel_scope.cancel()
        # Every request of the other client was answered while the flooder, which sent
        # first, had most of its requests still held back: it had at most its burst and its
        # rate since it began (the bucket's arithmetic, whatever the machine's speed).
        assert got <= bucket + limits.requests_per_second * elapsed + 1 < FLOOD / 2, got
        stats = node.statistics()["limits"]["principals"]
        assert stats[str(OTHER)].get("throttled", 0) == 0
        assert stats[str(FLOODER)]["throttled"] > 0


async def test_nodes_are_never_limited(tmp_path: Path) -> None:
    limits = LimitsPolicy(requests_per_second=1.0, burst_seconds=1.0, max_inflight=1)
    async with open_cluster(tmp_path, limits=limits) as cl:
        peer = cl.nodes[1].endpoint
        replies = []

        async def ask() -> None:
            replies.append(await peer.call(NodeId(0), "ping", None))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(ask)
        assert len(replies) == 50
        node = cl.nodes[0]
        assert node.stats["limits.throttled"] == 0 and node.stats["limits.inflight_waits"] == 0
        assert "1" not in node.statistics()["limits"]["principals"]
