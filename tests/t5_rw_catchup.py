"""Tier 5: a restarted node catches up on the blocks written while it was down (issue 22,
item 4; ``bftfs/node/rw_catchup.py``), in an in-process cluster with Byzantine peers and in real
node processes.

Progress is observed as an operator would, through the node's ``stats`` answer, polled
until a deadline (never a fixed sleep).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from rw_helpers import TEST_CLIENT, make_crashed, rw_cluster

from bftfs import erasure
from bftfs.connect import open_client
from bftfs.crypto import KeyRing
from bftfs.ids import NodeId
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.errors import RemoteError
from bftfs.node import rw_catchup as catchup
from bftfs.node.rw_catchup import PROGRESS_KEY
from bftfs.policy import VerificationPolicy
from bftfs.rate import BURST_SECONDS
from bftfs.rw import replica
from bftfs.rw.client import RWClient, open_rw_client
from bftfs.rw.messages import (
    KIND_LIST,
    KIND_READ_LATEST,
    BlockId,
    ListRequest,
    ReadReply,
    ReadRequest,
    encode_block_id,
)
from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.rw.verify import validate_fragment
from bftfs.testing.byzantine.rw import make_byzantine
from bftfs.testing.cluster import TEST_ENDPOINT, Cluster
from bftfs.testing.processes import ProcessCluster

K = 2  # the node that is down while blocks are written
BYZ = 4  # a Byzantine peer, where a test has one


def payload(block: int, version: int = 0) -> bytes:
    return (b"block %d version %d " % (block, version)) * (1 + block * 7 % 50)


async def wait_catchup(ep: Endpoint, node: int, *, deadline: float = 15.0) -> dict[str, Any]:
    """Poll ``node``'s stats until its catch-up is done or failed; its progress record."""
    with trio.fail_after(deadline):
        while True:
            try:
                stats = await ep.call(NodeId(node), "stats", None, timeout=2.0)
                prog = stats["progress"].get(PROGRESS_KEY)
                if prog is not None and prog["state"] in ("done", "failed"):
                    return prog
            except (RemoteError, OSError):
                pass
            await trio.sleep(0.02)


def assert_holds(cluster: Cluster, node: int, block: int, stamp: Timestamp, data: bytes) -> None:
    """Node ``node``'s store holds exactly its fragment of ``data`` at ``stamp``."""
    cfg = cluster.config
    reply = cluster.nodes[node].store.read(
        lambda kv: replica.read_step(kv, ReadRequest(BlockId(block), True, stamp, True))
    )
    assert reply.latest == stamp, f"block {block}: node {node} lacks {stamp!r}"
    assert reply.fragment == erasure.encode(data, cfg.m, cfg.n).fragments[node]


async def test_fresh_cluster_finds_nothing_behind(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path) as (cluster, _rws):
        for i in range(cluster.config.n):
            prog = await wait_catchup(cluster.client(0), i)
            assert prog["state"] == "done"
            assert (prog["candidates"], prog["behind"], prog["done"]) == (0, 0, 0)
        # Listing is between nodes: a client is refused.
        with pytest.raises(RemoteError, match="forbidden"):
            await cluster.client(0).call(NodeId(0), KIND_LIST, ListRequest(None, 5).to_wire())


@asynccontextmanager
async def scratch_writer(cluster: Cluster) -> AsyncIterator[RWClient]:
    """A client whose unfinished requests end with the block: a write's requests to a
    node that is down would otherwise be resent to it once it is back, and it would catch
    up without catch-up."""
    ring = KeyRing(cluster.client_identity(1), cluster.config.node_public_keys())
    async with (
        open_endpoint(ring, cluster.addresses, **TEST_ENDPOINT) as ep,
        open_rw_client(ep, cluster.config, **TEST_CLIENT) as rw,
    ):
        yield rw


async def _down_write_up(
    cluster: Cluster, rw: Any, blocks: int
) -> tuple[dict[int, Timestamp], dict[int, bytes]]:
    """Write one version of every block, take node K down, overwrite every block and write as
    many new ones, bring K back; what was written while K was down."""
    return await _down_write_up_with(cluster, rw, blocks, lambda: None)


async def _down_write_up_with(
    cluster: Cluster, rw: Any, blocks: int, before_up: Any
) -> tuple[dict[int, Timestamp], dict[int, bytes]]:
    await rw.write_blocks({b: payload(b) for b in range(blocks)})
    cluster.crash(K)
    await cluster.wait_stopped(K)
    data = {b: payload(b, 1) for b in range(2 * blocks)}
    async with scratch_writer(cluster) as writer:
        stamps = await writer.write_blocks(data)
    before_up()
    await cluster.recover(K)
    return stamps, data


async def test_restarted_node_catches_up_and_no_read_needs_repair(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path) as (cluster, (a, _b)):
        stamps, data = await _down_write_up(cluster, a, 10)
        prog = await wait_catchup(cluster.client(0), K)
        assert prog["state"] == "done", prog
        assert prog["candidates"] == prog["behind"] == prog["done"] == len(stamps), prog
        assert prog["skipped"] == prog["failed"] == prog["bad_peers"] == 0
        for b, stamp in stamps.items():
            assert_holds(cluster, K, b, stamp, data[b])
        # Another node fails: every block is still complete (QC + b = 5 hosts), so no
        # read repairs, and a read needs K's fragments.
        cluster.crash(0)
        async with open_rw_client(cluster.client(1), cluster.config, **TEST_CLIENT) as rw:
            assert await rw.read_blocks(data) == data
            assert rw.statistics()["repairs"] == 0


async def test_catch_up_reads_no_faster_than_its_byte_rate(tmp_path: Path) -> None:
    """``[verification] catchup_bytes_per_second`` paces what a catching-up node reads
    from the others: the pass reads every block it stores, and takes at least what the
    rate allows for those bytes (less one second of burst).  A lower bound on time, which
    a slow machine only lengthens; unpaced, this pass takes a fraction of it."""
    rate = 4000  # bytes/s; the 20 blocks below hold about 11 KB
    policy = VerificationPolicy(mode="off", catchup_bytes_per_second=rate)
    async with rw_cluster(tmp_path, verification=policy) as (cluster, (a, _b)):
        stamps, data = await _down_write_up(cluster, a, 10)
        prog = await wait_catchup(cluster.client(0), K)
        assert prog["state"] == "done", prog
        assert prog["done"] == len(stamps) == 20, prog
        assert prog["bytes_read"] == sum(len(data[b]) for b in stamps), prog
        assert prog["bytes_stored"] > 0, prog
        least = prog["bytes_read"] / rate - BURST_SECONDS
        assert least > 1.0  # the bound below means something
        assert prog["seconds"] >= least, prog


def _bogus_lister(cluster: Cluster, i: int, garbage: bool) -> None:
    """Peer ``i`` lists the truth plus a run of invented blocks after every cursor, or
    garbage."""

    async def lister(ctx: Any, payload: Any, honest: Any) -> Any:
        if garbage:
            return {"e": [[b"\x00" * 16, b"no"]], "more": "yes"}
        reply = await honest(ctx, payload)
        req = ListRequest.from_wire(payload)
        start = 0 if req.after is None else req.after + 1
        fake = Timestamp(1 << 62, 666, bytes(32)).encode()
        invented = [[encode_block_id(start + 1000 + j), fake] for j in range(req.limit)]
        merged = sorted({bytes(e[0]): e for e in reply["e"] + invented}.values())
        return {"e": merged[: req.limit], "more": True}

    cluster.faults[i].byzantine(KIND_LIST, lister)


@pytest.mark.parametrize(
    "behaviour",
    [
        "bogus-listing",
        "garbage-listing",
        "corrupt-fragment",
        "fabricate-huge-time",
        "bogus-history",
    ],
)
async def test_byzantine_peer_costs_nothing_but_time(tmp_path: Path, behaviour: str) -> None:
    async with rw_cluster(tmp_path) as (cluster, (a, _b)):
        await wait_catchup(cluster.client(0), BYZ)
        if behaviour.endswith("-listing"):
            _bogus_lister(cluster, BYZ, garbage=behaviour == "garbage-listing")
        else:
            make_byzantine(cluster, BYZ, behaviour)
            _bogus_lister(cluster, BYZ, garbage=False)
        stamps, data = await _down_write_up(cluster, a, 6)
        prog = await wait_catchup(cluster.client(0), K)
        assert prog["state"] == "done", prog
        # The invented blocks never became candidates: one peer is not enough.
        assert prog["candidates"] == prog["done"] == len(stamps), prog
        assert prog["failed"] == prog["skipped"] == 0
        assert prog["bad_peers"] == (1 if behaviour == "garbage-listing" else 0)
        for b, stamp in stamps.items():
            assert_holds(cluster, K, b, stamp, data[b])


async def test_only_complete_versions_are_caught_up(tmp_path: Path) -> None:
    """A repairable newest version is skipped (and not repaired); below an incomplete one
    the latest complete version is what K stores."""
    async with rw_cluster(tmp_path) as (cluster, (a, _b)):
        cfg = cluster.config
        cluster.crash(K)
        await cluster.wait_stopped(K)
        others = [i for i in range(cfg.n) if i != K]
        async with scratch_writer(cluster) as writer:
            old = {b: await writer.write_block(b, payload(b)) for b in (1, 2)}
            # Block 1: a newer write reached QC = 4 nodes: repairable, not provably
            # complete.  Block 2: a newer write reached 2 nodes: incomplete, so version
            # `old[2]` is the latest complete one.
            for block, reach in ((1, cfg.qc), (2, cfg.qc - cfg.t - 1)):
                enc = erasure.encode(payload(block, 9), cfg.m, cfg.n)
                stamp = Timestamp(old[block].time + 10, writer.endpoint.pid, enc.verifier)
                await writer.do_write(
                    BlockId(block),
                    stamp,
                    enc.fragments,
                    enc.cross_checksum,
                    targets=others[:reach],
                )
        await cluster.recover(K)
        prog = await wait_catchup(cluster.client(0), K)
        assert prog["state"] == "done", prog
        assert (prog["candidates"], prog["done"], prog["skipped"]) == (2, 1, 1), prog
        assert_holds(cluster, K, 2, old[2], payload(2))
        # Block 1: K still lacks every version (catch-up skipped it, repaired nothing).
        assert (
            cluster.nodes[K].store.read(lambda kv: replica.time_step(kv, BlockId(1))).latest == ZERO
        )
        assert cluster.nodes[others[-1]].stats["rw.write.new"] == 2  # no repair arrived


@pytest.mark.expected_logs(
    "bftfs.node",
    "WARNING",
    match=r"^node \d+: rw catch-up gives up after \d+ failed reads",
)
@pytest.mark.expected_logs(  # a loaded machine: a listing past the 0.5 s timeout below
    "bftfs.node",
    "WARNING",
    match=r"^node \d+: rw catch-up: only \d+ peers listed their blocks",
)
@pytest.mark.slow
def test_pass_gives_up_when_another_node_is_down_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With K back but node 0 down, no block K missed can be proven complete: each read
    fails (after the reader's timeout) and after a few in a row the pass ends."""
    monkeypatch.setattr(catchup, "READ_OPTIONS", {"timeout": 0.3, "probe_after": 0.05})
    monkeypatch.setattr(catchup, "LIST_TIMEOUT", 0.5)

    async def main() -> None:
        async with rw_cluster(tmp_path) as (cluster, (a, _b)):
            _stamps, _data = await _down_write_up_with(
                cluster, a, 4, lambda: make_crashed(cluster, 0)
            )
            prog = await wait_catchup(cluster.client(1), K)
            assert prog["state"] == "failed", prog
            assert prog["bad_peers"] == 1  # node 0 did not list
            assert prog["candidates"] == 8
            # Read ``catchup_parallel`` (8) at once, they fail together: the pass ends at
            # the third failure, the others cut short or never started are abandoned.
            assert prog["failed"] >= catchup.MAX_FAILED_IN_A_ROW, prog
            assert (prog["failed"] + prog["abandoned"], prog["done"]) == (8, 0), prog

    trio.run(main)


# --- real node processes -------------------------------------------------------------------


async def _write_and_wait(pc: ProcessCluster, blocks: dict[int, bytes]) -> dict[int, Timestamp]:
    async with open_client(pc.config) as ep, open_rw_client(ep, pc.config) as rw:
        return await rw.write_blocks(blocks)


def test_process_node_killed_restarted_catches_up(tmp_path: Path) -> None:
    """Node K is SIGKILLed, 40 blocks are written, K restarts: it fetches its fragments in
    the background; then with another node killed K's fragments are needed and no read
    repairs."""
    count = 40
    with ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc:
        cfg = pc.config
        pc.kill(K)
        data = {b: payload(b) for b in range(count)}
        stamps = trio.run(_write_and_wait, pc, data)
        pc.start(K)

        async def check() -> dict[str, Any]:
            async with open_client(cfg) as ep:
                prog = await wait_catchup(ep, K)
                for b, stamp in stamps.items():
                    req = ReadRequest(BlockId(b), True)
                    raw = await ep.call(NodeId(K), KIND_READ_LATEST, req.to_wire())
                    reply = ReadReply.from_wire(raw, req, n=cfg.n, max_fragment=cfg.block_size)
                    assert reply.latest == stamp
                    assert reply.cross_checksum is not None and reply.fragment is not None
                    assert validate_fragment(stamp, reply.cross_checksum, reply.fragment, K, cfg.n)
                return prog

        prog = trio.run(check)
        # Each candidate was stored by the catch-up, or already current when it came to it;
        # the other nodes' lazy verification may repair K first (8 of 40 current under
        # load), even before K's scan, and such a block is no candidate (2 of 40 once).
        # That K holds every block is what the loop above checked.
        assert prog["state"] == "done" and prog["done"] == prog["behind"], prog
        assert prog["done"] + prog["current"] == prog["candidates"], prog
        assert prog["failed"] == prog["skipped"] == 0
        pc.kill(0)

        async def read_back() -> None:
            async with open_client(cfg) as ep, open_rw_client(ep, cfg) as rw:
                assert await rw.read_blocks(data) == data
                assert rw.statistics()["repairs"] == 0

        trio.run(read_back)
