"""Repairs are charged to the version's writer, never to the reader (issue 31, item 2), with
real node processes.

A Byzantine client writes its blocks to just ``QC - t`` nodes, so that every reader must
repair them.  A correct reader with a small quota reads them, twice, and writes its own
blocks before and after: none of its reads or writes may get EDQUOT, and the nodes charge
the repairs to the attacker (the writer its timestamps name), not to the reader.

The rule cannot be turned around: a Byzantine client that writes new versions naming the
reader as their writer ("repairs" of versions that do not exist) is refused by every node,
and the reader is charged nothing.

Lazy verification is off, so that only the reader repairs (a node's verifier would
otherwise repair some blocks first, at its own pace).  No timing is asserted: outcomes and
the nodes' own charge totals (``stats``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs import erasure
from bftfs.connect import open_client
from bftfs.ids import NodeId
from bftfs.net.endpoint import Endpoint
from bftfs.policy import LimitsPolicy, VerificationPolicy
from bftfs.rw import replica
from bftfs.rw.client import RWClient, WriteFailed, open_rw_client
from bftfs.rw.messages import BlockId, WriteRequest
from bftfs.rw.timestamp import make_timestamp
from bftfs.testing.processes import ProcessCluster

BS = 4096
MAP = 64 * 1024 * 1024
OPTIONS = {"probe_after": 0.05, "timeout": 5.0}
#: The reader asks its first round's nodes (0 .. QC + b - 1) and no others while they
#: answer, so it sees every partial write below as repairable (a write to ``QC - t``
#: nodes is repairable only to a reader that hears from all of them).
READER = {"probe_after": 5.0, "timeout": 10.0}
#: Versions of one 4 KiB block the quota holds on a node.
ROOM = 44
#: The reader's own blocks, written before and after it reads the attacker's.
OWN_BEFORE, OWN_AFTER = 30, 10
#: The attacker's partial writes, half to nodes 0..2 and half to nodes 2..4 (node 2 holds
#: all of them, within the quota): the reader's repairs put half of them on each of nodes
#: 0, 1, 3 and 4, which with its own blocks is beyond ``ROOM`` there, and all on node 5.
PARTIAL = 40


def _version_size(m: int, n: int) -> int:
    enc = erasure.encode(b"\x00" * BS, m, n)
    stamp = make_timestamp(1, 1, enc.verifier)
    return replica.version_size(
        WriteRequest(BlockId(0), stamp, enc.cross_checksum, enc.fragments[0])
    )


def _cluster(tmp_path: Path) -> ProcessCluster:
    m, n = 3, 6  # the defaults for t = b = 1
    quota = ROOM * _version_size(m, n) + 100
    return ProcessCluster(
        tmp_path / "c",
        block_size=BS,
        map_size=MAP,
        durable=False,
        verification=VerificationPolicy(mode="off"),
        limits=LimitsPolicy(quota_fraction=quota / MAP),
    )


async def _charges(ep: Endpoint, n: int, principal: int) -> list[int]:
    """Each node's block-version charge total of ``principal``, as the node reports it."""
    out = []
    for i in range(n):
        stats = await ep.call(NodeId(i), "stats", None, timeout=5.0)
        got = stats["limits"]["principals"].get(str(principal), {})
        out.append(int(got.get("stored_bytes", 0)))
    return out


async def _partial(evil: RWClient, block: int, data: bytes, targets: range, writer: int) -> Any:
    """Write ``data`` at a fresh timestamp naming ``writer`` to ``targets`` only."""
    cfg = evil.th
    enc = erasure.encode(data, cfg.m, cfg.n)
    time_ = await evil.read_timestamp(BlockId(block))
    stamp = make_timestamp(time_, writer, enc.verifier)
    await evil.do_write(BlockId(block), stamp, enc.fragments, enc.cross_checksum, targets=targets)
    return stamp


def test_a_reader_repairing_an_attackers_partial_writes_is_not_charged(tmp_path: Path) -> None:
    with _cluster(tmp_path) as pc:
        cfg = pc.config
        reach = cfg.qc - cfg.t
        low, high = range(reach), range(reach - 1, 2 * reach - 1)

        async def main() -> None:
            async with (
                open_client(cfg, "client0") as evil_ep,
                open_client(cfg, "client1") as reader_ep,
                open_rw_client(evil_ep, cfg, **OPTIONS) as evil,
                open_rw_client(reader_ep, cfg, **READER) as reader,
            ):
                own = {
                    10_000 + k: (b"own %d " % k * BS)[:BS] for k in range(OWN_BEFORE + OWN_AFTER)
                }
                first = dict(list(own.items())[:OWN_BEFORE])
                await reader.write_blocks(first)
                attack = {k: (b"attack %d " % k * BS)[:BS] for k in range(PARTIAL)}
                for k, data in attack.items():
                    await _partial(evil, k, data, low if k % 2 else high, evil_ep.pid)
                for _ in range(2):  # read repeatedly: the first read repairs
                    for k, data in attack.items():
                        assert await reader.read_block(k) == data, k
                assert reader.statistics()["repairs"] == PARTIAL
                await reader.write_blocks(dict(list(own.items())[OWN_BEFORE:]))
                assert await reader.read_blocks(own) == own
                size = _version_size(cfg.m, cfg.n)
                # The reader pays for its own blocks only; the attacker for every copy of
                # its versions, the repaired ones included (beyond its quota: a repair is
                # never refused).
                assert await _charges(reader_ep, cfg.n, reader_ep.pid) == [len(own) * size] * cfg.n
                assert await _charges(reader_ep, cfg.n, evil_ep.pid) == [PARTIAL * size] * cfg.n

        trio.run(main)


def test_new_versions_naming_another_writer_are_refused_and_charge_nobody(
    tmp_path: Path,
) -> None:
    """An attacker cannot use "charged to the timestamp's writer" against the reader: a
    version that no ``b + 1`` other nodes host is not a repair, and only its writer may
    write it."""
    with _cluster(tmp_path) as pc:
        cfg = pc.config

        async def main() -> None:
            async with (
                open_client(cfg, "client0") as evil_ep,
                open_client(cfg, "client1") as reader_ep,
                open_rw_client(evil_ep, cfg, **OPTIONS) as evil,
                open_rw_client(reader_ep, cfg, **OPTIONS) as reader,
            ):
                await reader.write_block(7, (b"the reader's own" * 300)[:BS])
                victim = reader_ep.pid
                # To b + 1 nodes first (to seed a "proof"), then to every node.
                for targets in (range(cfg.b + 1), range(cfg.n)):
                    with pytest.raises(WriteFailed):
                        await _partial(evil, 7, (b"forged" * 700)[:BS], targets, victim)
                assert await reader.read_block(7) == (b"the reader's own" * 300)[:BS]
                size = _version_size(cfg.m, cfg.n)
                assert await _charges(reader_ep, cfg.n, victim) == [size] * cfg.n
                assert await _charges(reader_ep, cfg.n, evil_ep.pid) == [0] * cfg.n
                stats = [await reader_ep.call(NodeId(i), "stats", None) for i in range(cfg.n)]
                refused = [s["requests"].get("rw.refused.unproven", 0) for s in stats]
                assert all(r >= 1 for r in refused), refused

        trio.run(main)
